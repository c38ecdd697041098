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
            ..BaseAudioInfo::default()
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
    let client = room.client();
    let size = UInt::new(data.len() as u64);
    let source = if room.latest_encryption_state().await?.is_encrypted() {
        let mut reader = std::io::Cursor::new(data.as_slice());
        let file = client.upload_encrypted_file(&mut reader).await?;
        StickerMediaSource::Encrypted(Box::new(file))
    } else {
        let uploaded = client.media().upload(mime, data, None).await?;
        StickerMediaSource::Plain(uploaded.content_uri)
    };
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
