//! Files crossing the bridge (photos, videos, voice notes, documents, stickers): what
//! they are, where the source adapter can fetch them, and how they are named in the
//! short lines that stand in for them (captions, size-limit notices).

use serde::{Deserialize, Serialize};

/// What kind of file a message carries. Both sides know each kind: WhatsApp's
/// stickers become Matrix stickers (`m.sticker`); a Matrix sticker, which may be
/// any image, reaches WhatsApp as a photo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    Image,
    Video,
    /// A sound file (music, a recording shared as a file).
    Audio,
    /// A voice note (WhatsApp PTT, Matrix MSC3245 voice message).
    Voice,
    /// Any other file, sent as a document.
    File,
    Sticker,
}

impl MediaKind {
    /// The kind in a sentence: "Bob sent a photo".
    pub fn with_article(self) -> &'static str {
        match self {
            MediaKind::Image => "a photo",
            MediaKind::Video => "a video",
            MediaKind::Audio => "an audio file",
            MediaKind::Voice => "a voice message",
            MediaKind::File => "a file",
            MediaKind::Sticker => "a sticker",
        }
    }

    /// Whether a WhatsApp message of this kind carries a caption. Those that do not
    /// get their sender's name in a line of their own, sent just before them.
    pub fn has_whatsapp_caption(self) -> bool {
        matches!(self, MediaKind::Image | MediaKind::Video | MediaKind::File)
    }
}

/// A file attached to a message, as its source described it. `source` is opaque to
/// the core: only the adapter of the side the file comes from can fetch it (a
/// WhatsApp media reference, a Matrix media source). Stored in outbox rows as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Media {
    pub kind: MediaKind,
    pub source: String,
    pub mime: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
    /// Size in bytes, as announced by the source (the download is checked again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Duration of audio and video.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<u32>,
    /// A video to play as a GIF: looping, without sound or controls.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gif: bool,
    /// A voice message's waveform: the bars players draw, each 0 to 100.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waveform: Vec<u8>,
}

impl Media {
    /// The file in a sentence: "Bob sent a GIF", else as its kind says.
    pub fn with_article(&self) -> &'static str {
        if self.gif {
            "a GIF"
        } else {
            self.kind.with_article()
        }
    }

    /// "report.pdf, 12.5 MB" or "a video, 12.5 MB": how a notice names the file.
    pub fn describe(&self, size: u64) -> String {
        let name = match self.file_name.as_deref().map(clean_file_name) {
            Some(name) if !name.is_empty() => name,
            _ => self.kind.with_article().to_owned(),
        };
        format!("{name}, {}", human_size(size))
    }

    /// The file name for the receiving side, cleaned ([`clean_file_name`]), or one
    /// made up when the source gave none ("photo.jpg").
    pub fn file_name_or_default(&self) -> String {
        if let Some(name) = self.file_name.as_deref().map(clean_file_name) {
            if !name.is_empty() {
                return name;
            }
        }
        let stem = match self.kind {
            MediaKind::Image => "photo",
            MediaKind::Video => "video",
            MediaKind::Audio => "audio",
            MediaKind::Voice => "voice-message",
            MediaKind::File => "file",
            MediaKind::Sticker => "sticker",
        };
        match extension_for(&self.mime) {
            Some(extension) => format!("{stem}.{extension}"),
            None => stem.to_owned(),
        }
    }
}

/// Longest file name kept, in characters (its extension kept).
const MAX_FILE_NAME_CHARS: usize = 100;

/// A file name as a sender gave it, made safe to show and to save: no path (only
/// what follows the last `/` or `\\`), no control, bidi or zero-width characters
/// (`report\u{202E}fdp.exe` would show as `reportexe.pdf`), no leading dots, and at
/// most [`MAX_FILE_NAME_CHARS`] characters with its extension kept.
pub fn clean_file_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let shown = super::shown_name(base);
    let shown = shown.trim_start_matches('.').trim();
    if shown.chars().count() <= MAX_FILE_NAME_CHARS {
        return shown.to_owned();
    }
    let extension = shown
        .rsplit_once('.')
        .map(|(_, extension)| extension)
        .filter(|extension| !extension.is_empty() && extension.chars().count() <= 10);
    let keep = MAX_FILE_NAME_CHARS - extension.map_or(0, |e| e.chars().count() + 1) - 1;
    let stem: String = shown.chars().take(keep).collect();
    match extension {
        Some(extension) => format!("{stem}….{extension}"),
        None => format!("{stem}…"),
    }
}

/// A file size for people: "980 B", "12.5 kB", "3.2 MB", "1.1 GB" (powers of 1000).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The usual file extension for the MIME types people send each other.
fn extension_for(mime: &str) -> Option<&'static str> {
    let essence = mime.split(';').next().unwrap_or("").trim();
    Some(match essence {
        "image/jpeg" => "jpg",
        "image/png" => "png",
        "image/gif" => "gif",
        "image/webp" => "webp",
        "video/mp4" => "mp4",
        "video/3gpp" => "3gp",
        "audio/ogg" => "ogg",
        "audio/mpeg" => "mp3",
        "audio/mp4" | "audio/aac" => "m4a",
        "application/pdf" => "pdf",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_cleaned_of_paths_controls_and_excess() {
        assert_eq!(clean_file_name("../../etc/passwd"), "passwd");
        assert_eq!(
            clean_file_name("C:\\Users\\bob\\rapport.pdf"),
            "rapport.pdf"
        );
        assert_eq!(clean_file_name("rapport\u{202E}fdp.exe"), "rapportfdp.exe");
        assert_eq!(clean_file_name("a\nb\u{0000}.txt"), "a b .txt");
        assert_eq!(clean_file_name(".bashrc"), "bashrc");
        assert_eq!(clean_file_name("/"), "");
        let long = format!("{}.pdf", "é".repeat(300));
        let cleaned = clean_file_name(&long);
        assert_eq!(cleaned.chars().count(), 100);
        assert!(cleaned.ends_with("….pdf"), "{cleaned}");
    }

    fn media(kind: MediaKind, mime: &str, file_name: Option<&str>) -> Media {
        Media {
            kind,
            source: String::new(),
            mime: mime.into(),
            file_name: file_name.map(str::to_owned),
            size: None,
            seconds: None,
            gif: false,
            waveform: Vec::new(),
        }
    }

    #[test]
    fn sizes_read_like_a_file_manager() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(12_500), "12.5 kB");
        assert_eq!(human_size(52_428_800), "52.4 MB");
        assert_eq!(human_size(3_000_000_000), "3.0 GB");
    }

    #[test]
    fn notices_name_the_file_or_its_kind() {
        let report = media(MediaKind::File, "application/pdf", Some("report.pdf"));
        assert_eq!(report.describe(120_000_000), "report.pdf, 120.0 MB");
        let video = media(MediaKind::Video, "video/mp4", None);
        assert_eq!(video.describe(20_000_000), "a video, 20.0 MB");
    }

    #[test]
    fn files_without_a_name_get_one_from_their_kind_and_type() {
        let voice = media(MediaKind::Voice, "audio/ogg; codecs=opus", None);
        assert_eq!(voice.file_name_or_default(), "voice-message.ogg");
        let odd = media(MediaKind::File, "application/x-unknown", Some("  "));
        assert_eq!(odd.file_name_or_default(), "file");
        let named = media(MediaKind::Image, "image/png", Some("kids.png"));
        assert_eq!(named.file_name_or_default(), "kids.png");
    }

    #[test]
    fn only_photos_videos_and_documents_carry_a_caption_in_whatsapp() {
        assert!(MediaKind::Image.has_whatsapp_caption());
        assert!(MediaKind::File.has_whatsapp_caption());
        assert!(!MediaKind::Voice.has_whatsapp_caption());
        assert!(!MediaKind::Sticker.has_whatsapp_caption());
        assert!(!MediaKind::Audio.has_whatsapp_caption());
    }
}
