//! Matrix -> WhatsApp mentions: `@Name` of a WhatsApp person the bridge knows in the
//! group becomes a real WhatsApp mention of their number. WhatsApp people have no
//! Matrix accounts here (relaybot), so Matrix users can only type their name.

/// A WhatsApp person known in a group: their number and the name they go by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownPerson {
    pub phone: String,
    pub name: String,
}

/// `text` with every `@Name` (or `@+number`, `@number`) of a person in `known`
/// written the way WhatsApp marks a mention, `@<number>`, and the numbers
/// mentioned, in order of first mention. The longest matching name wins (`@Marie
/// Dupont` over `@Marie`); a name must end at a word boundary, so `@Bobby` does
/// not mention Bob. Matching ignores case. `@room` means nothing here.
pub fn whatsapp_mentions(text: &str, known: &[KnownPerson]) -> (String, Vec<String>) {
    let mut by_length: Vec<&KnownPerson> = known
        .iter()
        .filter(|person| !person.name.trim().is_empty() && !person.phone.is_empty())
        .collect();
    by_length.sort_by_key(|person| std::cmp::Reverse(person.name.chars().count()));

    let mut out = String::with_capacity(text.len());
    let mut mentioned: Vec<String> = Vec::new();
    let mut rest = text;
    let mut previous: Option<char> = None;
    while let Some(at) = rest.find('@') {
        let (before, from_at) = rest.split_at(at);
        out.push_str(before);
        previous = before.chars().last().or(previous);
        let after = &from_at[1..];
        let starts_word = previous.is_none_or(|c| !c.is_alphanumeric());
        let found = starts_word
            .then(|| match_person(after, &by_length))
            .flatten();
        match found {
            Some((phone, length)) => {
                out.push('@');
                out.push_str(&phone);
                if !mentioned.contains(&phone) {
                    mentioned.push(phone);
                }
                rest = &after[length..];
                previous = Some('0');
            }
            None => {
                out.push('@');
                rest = after;
                previous = Some('@');
            }
        }
    }
    out.push_str(rest);
    (out, mentioned)
}

/// The person whose name or number `after` (the text right after an `@`) starts
/// with, ending at a word boundary; with the length matched, in bytes.
fn match_person(after: &str, by_length: &[&KnownPerson]) -> Option<(String, usize)> {
    let ends_word = |length: usize| {
        after[length..]
            .chars()
            .next()
            .is_none_or(|c| !c.is_alphanumeric())
    };
    let digits = after.strip_prefix('+').unwrap_or(after);
    let number_length = digits.chars().take_while(char::is_ascii_digit).count();
    if number_length > 0 {
        let number = &digits[..number_length];
        let length = number_length + (after.len() - digits.len());
        if let Some(person) = by_length.iter().find(|person| person.phone == number) {
            return ends_word(length).then(|| (person.phone.clone(), length));
        }
    }
    by_length.iter().find_map(|person| {
        let name = person.name.trim();
        let candidate = after.get(..name.len())?;
        (candidate.to_lowercase() == name.to_lowercase() && ends_word(name.len()))
            .then(|| (person.phone.clone(), name.len()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn people() -> Vec<KnownPerson> {
        [
            ("33611111111", "Bob"),
            ("33622222222", "Marie"),
            ("33633333333", "Marie Dupont"),
        ]
        .into_iter()
        .map(|(phone, name)| KnownPerson {
            phone: phone.into(),
            name: name.into(),
        })
        .collect()
    }

    #[test]
    fn names_of_known_people_become_mentions_of_their_numbers() {
        let (text, mentioned) = whatsapp_mentions("*Alice*: merci @Bob !", &people());
        assert_eq!(text, "*Alice*: merci @33611111111 !");
        assert_eq!(mentioned, ["33611111111"]);
    }

    #[test]
    fn the_longest_name_wins_and_case_does_not_matter() {
        let (text, mentioned) = whatsapp_mentions("@marie dupont et @Marie, et @bob", &people());
        assert_eq!(text, "@33633333333 et @33622222222, et @33611111111");
        assert_eq!(mentioned, ["33633333333", "33622222222", "33611111111"]);
    }

    #[test]
    fn numbers_of_known_people_are_mentions_too() {
        let (text, mentioned) = whatsapp_mentions("@+33611111111 et @33622222222", &people());
        assert_eq!(text, "@33611111111 et @33622222222");
        assert_eq!(mentioned, ["33611111111", "33622222222"]);
    }

    #[test]
    fn unknown_names_partial_words_addresses_and_room_stay_as_written() {
        for text in [
            "@Bobby va bien",
            "alice@Bob.fr",
            "@room écoutez",
            "@ seul",
            "@33699999999",
            "fin @",
        ] {
            assert_eq!(
                whatsapp_mentions(text, &people()),
                (text.to_owned(), Vec::new()),
                "{text}"
            );
        }
    }

    #[test]
    fn a_person_mentioned_twice_is_listed_once() {
        let (_, mentioned) = whatsapp_mentions("@Bob @Bob", &people());
        assert_eq!(mentioned, ["33611111111"]);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Any text: no panic, nothing but the mentions changes, and with nobody
        /// known the text is untouched.
        #[test]
        fn any_text_keeps_everything_but_mentions(text in "(\\PC|@|@Bob|@Marie Dupont| ){0,40}") {
            let (unchanged, none) = whatsapp_mentions(&text, &[]);
            prop_assert_eq!(&unchanged, &text);
            prop_assert!(none.is_empty());
            let (changed, mentioned) = whatsapp_mentions(&text, &people());
            prop_assert_eq!(changed.matches('@').count(), text.matches('@').count());
            for phone in &mentioned {
                let marked = format!("@{phone}");
                prop_assert!(changed.contains(&marked));
            }
        }
    }
}
