//! Telling apart people who show the same name in one group: the key that look-alike
//! spellings of a name share, and the name shown once two speakers share one, so
//! that nobody can pose as another by copying a name.

/// The key two names share when a reader could take one for the other: look-alike
/// letters folded into one (decancer: `𝒜lice`, a Cyrillic `Аlice` and `alice` are
/// one), case, spaces and punctuation ignored.
pub fn name_key(shown: &str) -> String {
    let folded: String = decancer::cure!(shown)
        .map(String::from)
        .unwrap_or_else(|_| shown.to_lowercase());
    let letters: String = folded.chars().filter(|c| c.is_alphanumeric()).collect();
    if letters.is_empty() {
        folded
    } else {
        letters
    }
}

/// The fewest last digits of a number shown to tell its owner apart.
const TAIL_DIGITS: usize = 4;

/// The name of WhatsApp person `phone` once others in the group show the same name
/// (`namesakes`: their phone numbers or Matrix ids): `Bob (+33…1122)`, with as many
/// last digits as it takes to differ from the other numbers, never fewer than four.
/// The rest of the number stays hidden, as a group member's number is for those
/// who are not in their contacts.
pub fn whatsapp_told_apart(name: &str, phone: &str, namesakes: &[String]) -> String {
    if phone.is_empty() || !phone.is_ascii() {
        return format!("{name} (WhatsApp)");
    }
    let other_numbers: Vec<&str> = namesakes
        .iter()
        .map(String::as_str)
        .filter(|other| !other.starts_with('@') && other.is_ascii() && *other != phone)
        .collect();
    let shown = (TAIL_DIGITS..=phone.len())
        .map(|tail| (tail, masked_number(phone, tail)))
        .find(|(tail, mine)| {
            other_numbers
                .iter()
                .all(|other| masked_number(other, *tail) != *mine)
        })
        .map_or_else(|| format!("+{phone}"), |(_, mine)| mine);
    format!("{name} ({shown})")
}

/// `+33…1122`: the first two digits and the last `tail` ones, or the whole number
/// when that hides nothing.
fn masked_number(phone: &str, tail: usize) -> String {
    if phone.len() <= tail + 2 {
        return format!("+{phone}");
    }
    format!("+{}…{}", &phone[..2], &phone[phone.len() - tail..])
}

/// The name of Matrix user `user_id` once others in the group show the same name:
/// `Alice (@alice:example.org)` (a Matrix id is public in the room anyway).
pub fn matrix_told_apart(name: &str, user_id: &str) -> String {
    format!("{name} ({user_id})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn look_alike_names_share_a_key() {
        let alice = name_key("Alice");
        for same in ["alice", "ALICE", " A l i c e ", "𝒜lice", "Аlice", "Alice."] {
            assert_eq!(name_key(same), alice, "{same}");
        }
        assert_ne!(name_key("Alicia"), alice);
        assert_ne!(name_key("Bob"), alice);
        // Names of punctuation only keep their punctuation.
        assert_ne!(name_key("..."), name_key("!!!"));
    }

    #[test]
    fn numbers_show_as_many_last_digits_as_it_takes() {
        let others = vec!["33611119999".to_string(), "@bob:example.org".to_string()];
        assert_eq!(
            whatsapp_told_apart("Bob", "33611112222", &others),
            "Bob (+33…2222)"
        );
        let close = vec!["33611002222".to_string()];
        assert_eq!(
            whatsapp_told_apart("Bob", "33611112222", &close),
            "Bob (+33…12222)"
        );
        assert_eq!(whatsapp_told_apart("Bob", "123", &[]), "Bob (+123)");
        assert_eq!(whatsapp_told_apart("Bob", "", &[]), "Bob (WhatsApp)");
        assert_eq!(
            matrix_told_apart("Alice", "@alice:example.org"),
            "Alice (@alice:example.org)"
        );
    }
}
