//! Per-day, per-group, per-direction message counts for the yearly report: numbers
//! only, no content, no sender ids.

use rusqlite::params;

use super::{Direction, Store, StoreError};

/// Checks that `day` looks like `YYYY-MM-DD` (so that text order is date order).
fn check_day(day: &str) -> Result<(), StoreError> {
    let bytes = day.as_bytes();
    let shape_ok = bytes.len() == 10
        && bytes.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            _ => b.is_ascii_digit(),
        });
    let month = day.get(5..7).and_then(|m| m.parse::<u8>().ok());
    let dom = day.get(8..10).and_then(|d| d.parse::<u8>().ok());
    let ranges_ok = matches!(month, Some(1..=12)) && matches!(dom, Some(1..=31));
    if shape_ok && ranges_ok {
        Ok(())
    } else {
        Err(StoreError::InvalidDay(day.to_string()))
    }
}

impl Store {
    /// Adds `n` to the count of messages relayed on `day` (`YYYY-MM-DD`) for
    /// `group_jid` in `direction` (saturating).
    pub fn bump_counter(
        &self,
        day: &str,
        group_jid: &str,
        direction: Direction,
        n: u64,
    ) -> Result<(), StoreError> {
        check_day(day)?;
        // Saturates at i64::MAX (SQLite would silently turn an overflowing sum into REAL).
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.lock().execute(
            "INSERT INTO counters (day, group_jid, direction, count) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (day, group_jid, direction) DO UPDATE SET count =
                 CASE WHEN count > 9223372036854775807 - excluded.count
                      THEN 9223372036854775807 ELSE count + excluded.count END",
            params![day, group_jid, direction, n],
        )?;
        Ok(())
    }

    /// All counts from `from_day` to `to_day` (both included, `YYYY-MM-DD`), as
    /// `(day, group_jid, direction, count)` sorted by day, group, direction.
    pub fn counters(
        &self,
        from_day: &str,
        to_day: &str,
    ) -> Result<Vec<(String, String, Direction, u64)>, StoreError> {
        check_day(from_day)?;
        check_day(to_day)?;
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT day, group_jid, direction, count FROM counters
             WHERE day BETWEEN ?1 AND ?2 ORDER BY day, group_jid, direction",
        )?;
        let rows = stmt.query_map([from_day, to_day], |row| {
            let count: i64 = row.get(3)?;
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                u64::try_from(count).unwrap_or(0),
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bump_and_range() {
        let store = Store::open_in_memory().unwrap();
        store
            .bump_counter("2024-12-31", "g1", Direction::ToMatrix, 9)
            .unwrap();
        store
            .bump_counter("2025-01-01", "g1", Direction::ToMatrix, 1)
            .unwrap();
        store
            .bump_counter("2025-01-01", "g1", Direction::ToMatrix, 2)
            .unwrap();
        store
            .bump_counter("2025-01-01", "g1", Direction::ToWhatsApp, 4)
            .unwrap();
        store
            .bump_counter("2025-06-30", "g2", Direction::ToMatrix, 5)
            .unwrap();
        store
            .bump_counter("2026-01-01", "g2", Direction::ToMatrix, 7)
            .unwrap();
        let year = store.counters("2025-01-01", "2025-12-31").unwrap();
        assert_eq!(
            year,
            vec![
                ("2025-01-01".into(), "g1".into(), Direction::ToMatrix, 3),
                ("2025-01-01".into(), "g1".into(), Direction::ToWhatsApp, 4),
                ("2025-06-30".into(), "g2".into(), Direction::ToMatrix, 5),
            ]
        );
    }

    #[test]
    fn bad_days_are_refused_and_counts_saturate() {
        let store = Store::open_in_memory().unwrap();
        for bad in [
            "2025-1-01",
            "2025/01/01",
            "2025-13-01",
            "2025-01-00",
            "",
            "20250101xx",
        ] {
            assert!(
                matches!(
                    store.bump_counter(bad, "g", Direction::ToMatrix, 1),
                    Err(StoreError::InvalidDay(_))
                ),
                "{bad}"
            );
        }
        assert!(store.counters("2025-01-01", "nope").is_err());
        store
            .bump_counter("2025-01-01", "g", Direction::ToMatrix, u64::MAX)
            .unwrap();
        store
            .bump_counter("2025-01-01", "g", Direction::ToMatrix, 1)
            .unwrap();
        assert_eq!(
            store.counters("2025-01-01", "2025-01-01").unwrap()[0].3,
            i64::MAX as u64
        );
    }
}
