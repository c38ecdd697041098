//! Files on the WhatsApp side: reading the file of an incoming media message (kept as
//! an opaque reference until it is relayed), downloading it, and uploading a file to
//! send it as the association's number.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use whatsapp_rust::media::{AudioOptions, DocumentOptions, ImageOptions, VideoOptions};
use whatsapp_rust::upload::UploadOptions;
use whatsapp_rust::wacore::download::DownloadWriter;
use whatsapp_rust::wacore::download::MediaType;
use whatsapp_rust::waproto::buffa::{Message as _, MessageField};
use whatsapp_rust::waproto::whatsapp as wa;
use whatsapp_rust::Client;

use super::WhatsAppError;
use crate::relay::media::{Media, MediaKind};

/// The file of a media message and its caption, or `None` for any other message.
/// The reference (`source`) is the message reduced to its media field, without
/// thumbnail, caption or context: what a download needs, nothing people wrote.
pub(super) fn media_of(message: &wa::Message) -> Option<(Media, String)> {
    let mut reduced = wa::Message::default();
    let (kind, mime, file_name, size, seconds, caption) =
        if let Some(image) = message.image_message.as_option() {
            let mut kept = image.clone();
            // Never fetched: a sender may name any address (see `download`).
            kept.url = None;
            kept.static_url = None;
            kept.jpeg_thumbnail = None;
            kept.caption = None;
            kept.context_info = MessageField::none();
            reduced.image_message = MessageField::some(kept);
            (
                MediaKind::Image,
                image.mimetype.clone(),
                None,
                image.file_length,
                None,
                image.caption.clone(),
            )
        } else if let Some(video) = message.video_message.as_option() {
            let mut kept = video.clone();
            kept.url = None;
            kept.static_url = None;
            kept.jpeg_thumbnail = None;
            kept.caption = None;
            kept.context_info = MessageField::none();
            reduced.video_message = MessageField::some(kept);
            (
                MediaKind::Video,
                video.mimetype.clone(),
                None,
                video.file_length,
                video.seconds,
                video.caption.clone(),
            )
        } else if let Some(audio) = message.audio_message.as_option() {
            let mut kept = audio.clone();
            kept.waveform = None;
            kept.context_info = MessageField::none();
            reduced.audio_message = MessageField::some(kept);
            let kind = if audio.ptt == Some(true) {
                MediaKind::Voice
            } else {
                MediaKind::Audio
            };
            (
                kind,
                audio.mimetype.clone(),
                None,
                audio.file_length,
                audio.seconds,
                None,
            )
        } else if let Some(document) = message.document_message.as_option() {
            let mut kept = document.clone();
            kept.jpeg_thumbnail = None;
            kept.caption = None;
            kept.context_info = MessageField::none();
            reduced.document_message = MessageField::some(kept);
            (
                MediaKind::File,
                document.mimetype.clone(),
                document.file_name.clone(),
                document.file_length,
                None,
                document.caption.clone(),
            )
        } else if let Some(sticker) = message.sticker_message.as_option() {
            let mut kept = sticker.clone();
            kept.png_thumbnail = None;
            kept.context_info = MessageField::none();
            reduced.sticker_message = MessageField::some(kept);
            (
                MediaKind::Sticker,
                sticker.mimetype.clone(),
                None,
                sticker.file_length,
                None,
                None,
            )
        } else {
            return None;
        };
    let default_mime = match kind {
        MediaKind::Image => "image/jpeg",
        MediaKind::Video => "video/mp4",
        MediaKind::Audio | MediaKind::Voice => "audio/ogg; codecs=opus",
        MediaKind::Sticker => "image/webp",
        MediaKind::File => "application/octet-stream",
    };
    let media = Media {
        kind,
        source: base64::engine::general_purpose::STANDARD.encode(reduced.encode_to_vec()),
        mime: mime
            .filter(|m| !m.trim().is_empty())
            .unwrap_or_else(|| default_mime.to_owned()),
        file_name,
        size,
        seconds,
        gif: kind == MediaKind::Video
            && message
                .video_message
                .as_option()
                .and_then(|video| video.gif_playback)
                .unwrap_or(false),
        waveform: message
            .audio_message
            .as_option()
            .and_then(|audio| audio.waveform.clone())
            .map(|bars| bars.into_iter().map(|bar| bar.min(100)).collect())
            .unwrap_or_default(),
    };
    Some((media, caption.unwrap_or_default()))
}

/// The card of a contact message (one or several contacts) as a `.vcf` file, named
/// after the contact. The card travels inside its reference: nothing to download.
pub(super) fn contact_card(message: &wa::Message) -> Option<Media> {
    let mut reduced = wa::Message::default();
    let (name, size) = if let Some(contact) = message.contact_message.as_option() {
        reduced.contact_message = MessageField::some(wa::message::ContactMessage {
            display_name: contact.display_name.clone(),
            vcard: contact.vcard.clone(),
            ..Default::default()
        });
        (
            contact.display_name.clone(),
            contact.vcard.as_deref().unwrap_or_default().len(),
        )
    } else if let Some(array) = message.contacts_array_message.as_option() {
        reduced.contacts_array_message = MessageField::some(wa::message::ContactsArrayMessage {
            display_name: array.display_name.clone(),
            contacts: array
                .contacts
                .iter()
                .map(|contact| wa::message::ContactMessage {
                    display_name: contact.display_name.clone(),
                    vcard: contact.vcard.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        let size = array
            .contacts
            .iter()
            .map(|contact| contact.vcard.as_deref().unwrap_or_default().len() + 2)
            .sum();
        (array.display_name.clone(), size)
    } else {
        return None;
    };
    if size == 0 {
        return None;
    }
    Some(Media {
        kind: MediaKind::File,
        source: base64::engine::general_purpose::STANDARD.encode(reduced.encode_to_vec()),
        mime: "text/vcard".to_owned(),
        file_name: Some(format!(
            "{}.vcf",
            file_safe(name.as_deref().unwrap_or("contact"))
        )),
        size: Some(size as u64),
        seconds: None,
        gif: false,
        waveform: Vec::new(),
    })
}

/// `name` usable as a file name: path and control characters replaced.
fn file_safe(name: &str) -> String {
    let cleaned: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_control() || matches!(c, '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|') {
                '_'
            } else {
                c
            }
        })
        .collect();
    let cleaned = cleaned.trim_matches('.').trim();
    if cleaned.is_empty() {
        "contact".to_owned()
    } else {
        cleaned.chars().take(80).collect()
    }
}

/// The cards of a contact message, one after the other.
fn vcards_of(message: &wa::Message) -> Option<Vec<u8>> {
    if let Some(contact) = message.contact_message.as_option() {
        return Some(contact.vcard.clone().unwrap_or_default().into_bytes());
    }
    let array = message.contacts_array_message.as_option()?;
    let cards: Vec<&str> = array
        .contacts
        .iter()
        .filter_map(|contact| contact.vcard.as_deref())
        .map(str::trim_end)
        .collect();
    Some(format!("{}\r\n", cards.join("\r\n")).into_bytes())
}

/// Longest a download may take, from the first connection to the last byte; past
/// it the download fails (and is tried again later, a bounded number of times).
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Downloads and decrypts the file `media` refers to, keeping at most `max_bytes`:
/// a file that grows past that, or past the size its message declared, is cut off
/// ([`WhatsAppError::TooLarge`]). Only WhatsApp's own media hosts are asked: a
/// sender's `url` or `static_url` (a modified client can name any address, the
/// host's own network included) is dropped, so the library builds the URL from the
/// file's path and the hosts WhatsApp's server gave.
pub(super) async fn download(
    client: &Client,
    media: &Media,
    max_bytes: u64,
) -> Result<Vec<u8>, WhatsAppError> {
    let unreadable = || WhatsAppError::Rejected("unreadable WhatsApp media reference".to_owned());
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&media.source)
        .map_err(|_| unreadable())?;
    let mut message = wa::Message::decode_from_slice(&bytes).map_err(|_| unreadable())?;
    if let Some(cards) = vcards_of(&message) {
        return Ok(cards);
    }
    let declared = media.size.filter(|size| *size > 0).unwrap_or(u64::MAX);
    let cap = CappedBuffer::new(max_bytes.min(declared));
    let overflowed = cap.overflowed.clone();
    macro_rules! fetch {
        ($field:expr $(, $static_url:ident)?) => {{
            let kept = $field;
            kept.url = None;
            $(kept.$static_url = None;)?
            tokio::time::timeout(DOWNLOAD_TIMEOUT, client.download_to_writer(&*kept, cap)).await
        }};
    }
    let result = if let Some(image) = message.image_message.as_option_mut() {
        fetch!(image, static_url)
    } else if let Some(video) = message.video_message.as_option_mut() {
        fetch!(video, static_url)
    } else if let Some(audio) = message.audio_message.as_option_mut() {
        fetch!(audio)
    } else if let Some(document) = message.document_message.as_option_mut() {
        fetch!(document)
    } else if let Some(sticker) = message.sticker_message.as_option_mut() {
        fetch!(sticker)
    } else {
        return Err(unreadable());
    };
    let Ok(result) = result else {
        return Err(WhatsAppError::Transient(format!(
            "media download took longer than {} minutes",
            DOWNLOAD_TIMEOUT.as_secs() / 60
        )));
    };
    match result {
        Ok(buffer) => Ok(buffer.into_bytes()),
        Err(_) if overflowed.load(Ordering::Relaxed) => Err(WhatsAppError::TooLarge {
            received_over: max_bytes.min(declared),
        }),
        Err(error) => Err(download_error(&error)),
    }
}

/// What a failed download means: expired or deleted media never come back, and a
/// file that does not decrypt (a wrong key, a sender's forgery) never will either;
/// anything else may.
fn download_error(error: &anyhow::Error) -> WhatsAppError {
    let text = format!("{error:#}");
    let lower = text.to_lowercase();
    if text.contains("404") || text.contains("410") {
        WhatsAppError::Rejected(format!("media no longer available: {text}"))
    } else if [
        "mismatch",
        "padding",
        "missing",
        "invalid final media size",
        "bad aes key",
        "not on whatsapp's media hosts",
    ]
    .iter()
    .any(|sign| lower.contains(sign))
    {
        WhatsAppError::Rejected(format!("media unreadable: {text}"))
    } else {
        WhatsAppError::Transient(format!("media download: {text}"))
    }
}

/// The decrypted file, in memory, refusing to grow past its cap: the write that
/// would pass it fails, which stops the download, and `overflowed` says why.
struct CappedBuffer {
    bytes: std::io::Cursor<Vec<u8>>,
    cap: u64,
    overflowed: Arc<AtomicBool>,
}

impl CappedBuffer {
    fn new(cap: u64) -> Self {
        CappedBuffer {
            bytes: std::io::Cursor::new(Vec::new()),
            cap,
            overflowed: Arc::new(AtomicBool::new(false)),
        }
    }

    fn into_bytes(self) -> Vec<u8> {
        self.bytes.into_inner()
    }
}

impl std::io::Write for CappedBuffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let end = self.bytes.position().saturating_add(data.len() as u64);
        if end > self.cap {
            self.overflowed.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other(
                "the file is larger than the bridge keeps",
            ));
        }
        self.bytes.write(data)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::io::Seek for CappedBuffer {
    fn seek(&mut self, position: std::io::SeekFrom) -> std::io::Result<u64> {
        self.bytes.seek(position)
    }
}

impl DownloadWriter for CappedBuffer {
    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        self.bytes.truncate(len)
    }
}

/// Uploads `data` and builds the message that sends it, with `caption` where
/// WhatsApp shows one and `context` (a reply) attached.
pub(super) async fn message_for(
    client: &Client,
    media: &Media,
    data: Vec<u8>,
    caption: Option<String>,
    context: Option<wa::ContextInfo>,
) -> Result<wa::Message, WhatsAppError> {
    let media_type = match media.kind {
        MediaKind::Image | MediaKind::Sticker => MediaType::Image,
        MediaKind::Video => MediaType::Video,
        MediaKind::Audio | MediaKind::Voice => MediaType::Audio,
        MediaKind::File => MediaType::Document,
    };
    let upload = client
        .upload(data, media_type, UploadOptions::default())
        .await
        .map_err(|error| WhatsAppError::Transient(format!("media upload: {error:#}")))?;
    let mime = Some(media.mime.clone());
    let context = context.map(Box::new);
    Ok(match media.kind {
        MediaKind::Video => {
            let mut message = whatsapp_rust::media::video_message(
                upload,
                VideoOptions {
                    caption,
                    mimetype: mime,
                    duration_seconds: media.seconds,
                    context_info: context,
                    ..VideoOptions::default()
                },
            );
            if let Some(video) = message.video_message.as_option_mut() {
                video.gif_playback = media.gif.then_some(true);
            }
            message
        }
        MediaKind::Audio | MediaKind::Voice => whatsapp_rust::media::audio_message(
            upload,
            AudioOptions {
                mimetype: mime,
                duration_seconds: media.seconds,
                ptt: Some(media.kind == MediaKind::Voice),
                waveform: (!media.waveform.is_empty()).then(|| media.waveform.clone()),
                context_info: context,
            },
        ),
        MediaKind::File => whatsapp_rust::media::document_message(
            upload,
            DocumentOptions {
                mimetype: mime,
                file_name: Some(media.file_name_or_default()),
                title: Some(media.file_name_or_default()),
                caption,
                context_info: context,
                ..DocumentOptions::default()
            },
        ),
        // Matrix stickers are any image (WhatsApp wants 512x512 WebP): sent as a
        // photo, after the sender's line.
        MediaKind::Image | MediaKind::Sticker => whatsapp_rust::media::image_message(
            upload,
            ImageOptions {
                caption,
                mimetype: mime,
                context_info: context,
                ..ImageOptions::default()
            },
        ),
    })
}
