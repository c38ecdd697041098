//! Files on the Matrix side: reading the file of an `m.image`/`m.video`/`m.audio`/
//! `m.file` event, fetching it from the homeserver (authenticated media, decrypted
//! in encrypted rooms), and posting a file with its caption as the bot.

use std::time::Duration;

use matrix_sdk::attachment::{
    AttachmentConfig, AttachmentInfo, BaseAudioInfo, BaseFileInfo, BaseImageInfo, BaseVideoInfo,
};
use matrix_sdk::media::{MediaFormat, MediaRequestParameters};
use matrix_sdk::room::reply::{EnforceThread, Reply};
use matrix_sdk::ruma::events::room::message::{
    FormattedBody, MessageFormat, MessageType, TextMessageEventContent,
};
use matrix_sdk::ruma::events::room::{ImageInfo, MediaSource};
use matrix_sdk::ruma::events::sticker::{StickerEventContent, StickerMediaSource};
use matrix_sdk::ruma::{EventId, OwnedTransactionId, UInt};
use matrix_sdk::Client;

use serde_json::json;

use crate::relay::media::{Media, MediaKind};
use crate::relay::MatrixPost;

use super::MatrixError;

/// The file of a media message with its caption (`body`, `html`), or `None` for any
/// other message type. Per MSC2530, the body is a caption only when the event also
/// names the file and the two differ; otherwise the body is just the file name.
pub(super) fn media_of(msgtype: &MessageType) -> Option<(Media, String, Option<String>)> {
    let (kind, body, formatted, filename, source, mime, size, duration) = match msgtype {
        MessageType::Image(image) => {
            let info = image.info.as_deref();
            (
                MediaKind::Image,
                &image.body,
                &image.formatted,
                &image.filename,
                &image.source,
                info.and_then(|i| i.mimetype.clone()),
                info.and_then(|i| i.size),
                None,
            )
        }
        MessageType::Video(video) => {
            let info = video.info.as_deref();
            (
                MediaKind::Video,
                &video.body,
                &video.formatted,
                &video.filename,
                &video.source,
                info.and_then(|i| i.mimetype.clone()),
                info.and_then(|i| i.size),
                info.and_then(|i| i.duration),
            )
        }
        MessageType::Audio(audio) => {
            let info = audio.info.as_deref();
            let kind = if audio.voice.is_some() {
                MediaKind::Voice
            } else {
                MediaKind::Audio
            };
            (
                kind,
                &audio.body,
                &audio.formatted,
                &audio.filename,
                &audio.source,
                info.and_then(|i| i.mimetype.clone()),
                info.and_then(|i| i.size),
                info.and_then(|i| i.duration),
            )
        }
        MessageType::File(file) => {
            let info = file.info.as_deref();
            (
                MediaKind::File,
                &file.body,
                &file.formatted,
                &file.filename,
                &file.source,
                info.and_then(|i| i.mimetype.clone()),
                info.and_then(|i| i.size),
                None,
            )
        }
        _ => return None,
    };
    let (file_name, caption, html) = match filename {
        Some(name) if name != body => (
            name.clone(),
            body.clone(),
            formatted
                .as_ref()
                .filter(|f| f.format == MessageFormat::Html)
                .map(|f| f.body.clone()),
        ),
        _ => (body.clone(), String::new(), None),
    };
    let media = Media {
        kind,
        source: serde_json::to_string(source).ok()?,
        mime: mime.unwrap_or_else(|| "application/octet-stream".to_owned()),
        file_name: Some(file_name).filter(|name| !name.trim().is_empty()),
        size: size.map(u64::from),
        seconds: duration.map(|d| d.as_secs().min(u64::from(u32::MAX)) as u32),
        gif: false,
        waveform: Vec::new(),
    };
    Some((media, caption, html))
}

/// The file of an `m.sticker` event (its body is a description, not a caption).
pub(super) fn sticker_media(
    content: &matrix_sdk::ruma::events::sticker::StickerEventContent,
) -> Option<Media> {
    let source: MediaSource = content.source.clone().into();
    Some(Media {
        kind: MediaKind::Sticker,
        source: serde_json::to_string(&source).ok()?,
        mime: content
            .info
            .mimetype
            .clone()
            .unwrap_or_else(|| "image/png".to_owned()),
        file_name: None,
        size: content.info.size.map(u64::from),
        seconds: None,
        gif: false,
        waveform: Vec::new(),
    })
}

/// Longest a Matrix file may take to download: the SDK retries on its own, and the
/// worker to WhatsApp waits meanwhile. Past it the message is tried again later
/// (its attempts counted), as for any failed download.
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest a file may take to upload to the homeserver and post.
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// Downloads (and decrypts, for encrypted rooms) the file of a Matrix media event,
/// within [`DOWNLOAD_TIMEOUT`].
pub(super) async fn download(client: &Client, media: &Media) -> Result<Vec<u8>, MatrixError> {
    tokio::time::timeout(DOWNLOAD_TIMEOUT, download_now(client, media))
        .await
        .map_err(|_| MatrixError::TimedOut("downloading a Matrix file"))?
}

async fn download_now(client: &Client, media: &Media) -> Result<Vec<u8>, MatrixError> {
    let source: MediaSource = serde_json::from_str(&media.source)
        .map_err(|_| MatrixError::InvalidId("unreadable media source".to_owned()))?;
    let request = MediaRequestParameters {
        source,
        format: MediaFormat::File,
    };
    Ok(client.media().get_media_content(&request, false).await?)
}

/// Posts `data` as the bot's media message of kind `post.media`, with the post's
/// text as caption, idempotently under `txn_id`.
pub(super) async fn send(
    room: &matrix_sdk::Room,
    txn_id: &str,
    post: &MatrixPost,
    media: &Media,
    data: Vec<u8>,
    reply_to: Option<&str>,
) -> Result<String, MatrixError> {
    let mime: mime::Mime = media.mime.parse().unwrap_or(mime::APPLICATION_OCTET_STREAM);
    if media.kind == MediaKind::Sticker {
        return send_sticker(room, txn_id, post, &mime, data).await;
    }
    if media.kind == MediaKind::Video && media.gif {
        return send_gif(room, txn_id, post, media, &mime, data, reply_to).await;
    }
    let size = UInt::new(data.len() as u64);
    let duration = media.seconds.map(|s| Duration::from_secs(u64::from(s)));
    let info = match media.kind {
        MediaKind::Image | MediaKind::Sticker => AttachmentInfo::Image(BaseImageInfo {
            size,
            ..BaseImageInfo::default()
        }),
        MediaKind::Video => AttachmentInfo::Video(BaseVideoInfo {
            duration,
            size,
            ..BaseVideoInfo::default()
        }),
        MediaKind::Audio => AttachmentInfo::Audio(BaseAudioInfo {
            duration,
            size,
            ..BaseAudioInfo::default()
        }),
        MediaKind::Voice => AttachmentInfo::Voice(BaseAudioInfo {
            duration,
            size,
            waveform: (!media.waveform.is_empty()).then(|| {
                media
                    .waveform
                    .iter()
                    .map(|bar| f32::from(*bar.min(&100)) / 100.0)
                    .collect()
            }),
        }),
        MediaKind::File => AttachmentInfo::File(BaseFileInfo { size }),
    };
    let mut caption = TextMessageEventContent::plain(post.body.clone());
    if !post.html.is_empty() {
        caption.formatted = Some(FormattedBody::html(post.html.clone()));
    }
    let mut config = AttachmentConfig::new()
        .txn_id(OwnedTransactionId::from(txn_id))
        .info(info)
        .caption(Some(caption));
    if let Some(event_id) = reply_to {
        let event_id =
            EventId::parse(event_id).map_err(|_| MatrixError::InvalidId(event_id.to_owned()))?;
        config = config.reply(Some(Reply {
            event_id,
            enforce_thread: EnforceThread::MaybeThreaded,
            add_mentions: matrix_sdk::ruma::events::room::message::AddMentions::No,
        }));
    }
    let response = room
        .send_attachment(media.file_name_or_default(), &mime, data, config)
        .await?;
    Ok(response.event_id.to_string())
}

/// Posts a WhatsApp sticker as an `m.sticker`, as Matrix clients show stickers
/// (its file encrypted in an encrypted room), idempotently under `txn_id`. Its
/// body says who sent it, for clients that show only text.
async fn send_sticker(
    room: &matrix_sdk::Room,
    txn_id: &str,
    post: &MatrixPost,
    mime: &mime::Mime,
    data: Vec<u8>,
) -> Result<String, MatrixError> {
    let size = UInt::new(data.len() as u64);
    let source = StickerMediaSource::from(upload(room, mime, data).await?);
    let mut info = ImageInfo::new();
    info.mimetype = Some(mime.to_string());
    info.size = size;
    let content = StickerEventContent::with_source(post.body.clone(), info, source);
    let response = room
        .send(content)
        .with_transaction_id(OwnedTransactionId::from(txn_id))
        .await?;
    Ok(response.response.event_id.to_string())
}

/// Uploads `data` for a message of the bot's in `room`: encrypted in an encrypted
/// room (the file's key goes in the message), as it is in another.
async fn upload(
    room: &matrix_sdk::Room,
    mime: &mime::Mime,
    data: Vec<u8>,
) -> Result<MediaSource, MatrixError> {
    let client = room.client();
    if room.latest_encryption_state().await?.is_encrypted() {
        let mut reader = std::io::Cursor::new(data.as_slice());
        let file = client.upload_encrypted_file(&mut reader).await?;
        Ok(MediaSource::Encrypted(Box::new(file)))
    } else {
        let uploaded = client.media().upload(mime, data, None).await?;
        Ok(MediaSource::Plain(uploaded.content_uri))
    }
}

/// Posts a WhatsApp GIF (a video to loop) as an `m.video` with the hints clients
/// read to play it as a GIF (looping, autoplay, no controls, no sound: the
/// `fi.mau.*` keys other bridges and clients use), idempotently under `txn_id`.
async fn send_gif(
    room: &matrix_sdk::Room,
    txn_id: &str,
    post: &MatrixPost,
    media: &Media,
    mime: &mime::Mime,
    data: Vec<u8>,
    reply_to: Option<&str>,
) -> Result<String, MatrixError> {
    let size = data.len();
    let source = upload(room, mime, data).await?;
    let file_name = media.file_name_or_default();
    let mut content = json!({
        "msgtype": "m.video",
        "body": if post.body.is_empty() { file_name.clone() } else { post.body.clone() },
        "filename": file_name,
        "info": {
            "mimetype": mime.to_string(),
            "size": size,
            "fi.mau.gif": true,
            "fi.mau.loop": true,
            "fi.mau.autoplay": true,
            "fi.mau.hide_controls": true,
            "fi.mau.no_audio": true,
        },
    });
    match source {
        MediaSource::Plain(url) => content["url"] = json!(url),
        MediaSource::Encrypted(file) => {
            content["file"] = serde_json::to_value(&file).map_err(matrix_sdk::Error::from)?
        }
    }
    if !post.html.is_empty() {
        content["format"] = json!("org.matrix.custom.html");
        content["formatted_body"] = json!(post.html);
    }
    if let Some(event_id) = reply_to {
        content["m.relates_to"] = json!({ "m.in_reply_to": { "event_id": event_id } });
    }
    let response = room
        .send_raw("m.room.message", content)
        .with_transaction_id(&OwnedTransactionId::from(txn_id))
        .await?;
    Ok(response.response.event_id.to_string())
}
