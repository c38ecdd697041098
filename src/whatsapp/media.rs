//! Files on the WhatsApp side: reading the file of an incoming media message (kept as
//! an opaque reference until it is relayed), downloading it, and uploading a file to
//! send it as the association's number.

use base64::Engine as _;
use whatsapp_rust::media::{AudioOptions, DocumentOptions, ImageOptions, VideoOptions};
use whatsapp_rust::upload::UploadOptions;
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

/// Downloads and decrypts the file `media` refers to.
pub(super) async fn download(client: &Client, media: &Media) -> Result<Vec<u8>, WhatsAppError> {
    let unreadable = || WhatsAppError::Rejected("unreadable WhatsApp media reference".to_owned());
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&media.source)
        .map_err(|_| unreadable())?;
    let message = wa::Message::decode_from_slice(&bytes).map_err(|_| unreadable())?;
    if let Some(cards) = vcards_of(&message) {
        return Ok(cards);
    }
    let result = if let Some(image) = message.image_message.as_option() {
        client.download(image).await
    } else if let Some(video) = message.video_message.as_option() {
        client.download(video).await
    } else if let Some(audio) = message.audio_message.as_option() {
        client.download(audio).await
    } else if let Some(document) = message.document_message.as_option() {
        client.download(document).await
    } else if let Some(sticker) = message.sticker_message.as_option() {
        client.download(sticker).await
    } else {
        return Err(unreadable());
    };
    result.map_err(|error| {
        // Expired or deleted media will never come back; anything else may.
        let text = format!("{error:#}");
        if text.contains("404") || text.contains("410") {
            WhatsAppError::Rejected(format!("media no longer available: {text}"))
        } else {
            WhatsAppError::Transient(format!("media download: {text}"))
        }
    })
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
        MediaKind::Video => whatsapp_rust::media::video_message(
            upload,
            VideoOptions {
                caption,
                mimetype: mime,
                duration_seconds: media.seconds,
                context_info: context,
                ..VideoOptions::default()
            },
        ),
        MediaKind::Audio | MediaKind::Voice => whatsapp_rust::media::audio_message(
            upload,
            AudioOptions {
                mimetype: mime,
                duration_seconds: media.seconds,
                ptt: Some(media.kind == MediaKind::Voice),
                context_info: context,
                ..AudioOptions::default()
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
