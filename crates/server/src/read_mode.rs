//! Follower reads in the gateway, chosen per connection by unmodified
//! clients: at OPEN with a database name `NAME?dqlite_read_mode=MODE`,
//! and later with `PRAGMA dqlite_read_mode`, which the gateway answers
//! itself (SQLite never sees it).

pub use dqlite_wire::read_mode::{ParseReadModeError, ReadMode, PRAGMA};

/// A `PRAGMA dqlite_read_mode` statement: `None` reads the mode, `Some`
/// sets it.
pub type ReadModePragma = Option<Result<ReadMode, ParseReadModeError>>;

/// Recognizes SQL that is exactly one `PRAGMA dqlite_read_mode` statement
/// (`= value`, `(value)` or no value; the value bare or quoted; an optional
/// `main.` schema and trailing `;`). Anything else is `None` and goes to
/// SQLite.
pub fn parse_pragma(sql: &str) -> Option<ReadModePragma> {
    let rest = strip_keyword(sql.trim_start(), "pragma")?;
    let rest = rest.trim_start();
    let rest = strip_keyword(rest, "main.").unwrap_or(rest);
    let rest = strip_keyword(rest.trim_start(), PRAGMA)?;
    let rest = rest.trim();
    let rest = rest.strip_suffix(';').unwrap_or(rest).trim_end();
    if rest.is_empty() {
        return Some(None);
    }
    let value = if let Some(v) = rest.strip_prefix('=') {
        v.trim()
    } else {
        rest.strip_prefix('(')?.strip_suffix(')')?.trim()
    };
    let value = unquote(value);
    Some(Some(value.parse()))
}

/// The query parameter of a database name that sets the read mode at
/// OPEN: `NAME?dqlite_read_mode=MODE`.
const NAME_PARAM: &str = "dqlite_read_mode=";

/// Splits the read mode off a database name given to OPEN: `app?dqlite_read_mode=follower`
/// is database `app` read in follower mode. Other `&`-separated parameters
/// stay in the name; a name without the parameter is returned whole.
pub fn split_name(name: &str) -> Result<(String, Option<ReadMode>), ParseReadModeError> {
    let Some((base, query)) = name.split_once('?') else {
        return Ok((name.to_owned(), None));
    };
    let mut mode = None;
    let mut rest = Vec::new();
    for param in query.split('&') {
        match param.strip_prefix(NAME_PARAM) {
            Some(value) => mode = Some(value.parse()?),
            None => rest.push(param),
        }
    }
    if mode.is_none() {
        return Ok((name.to_owned(), None));
    }
    let name = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((name, mode))
}

/// `s` without a leading `keyword` (any case); a word keyword must end
/// there.
fn strip_keyword<'a>(s: &'a str, keyword: &str) -> Option<&'a str> {
    let head = s.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = &s[keyword.len()..];
    let word_ends = keyword.ends_with('.')
        || !rest
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    word_ends.then_some(rest)
}

fn unquote(v: &str) -> &str {
    for q in ['\'', '"', '`'] {
        if let Some(inner) = v.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner;
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    #[test]
    fn the_mode_splits_off_a_database_name() {
        let cases: &[(&str, &str, Option<ReadMode>)] = &[
            ("app", "app", None),
            (
                "app?dqlite_read_mode=follower",
                "app",
                Some(ReadMode::Follower),
            ),
            (
                "app?x=1&dqlite_read_mode=stale:40",
                "app?x=1",
                Some(ReadMode::Stale(Duration::from_millis(40))),
            ),
            ("app?x=1", "app?x=1", None),
            ("a?b", "a?b", None),
        ];
        for &(name, base, mode) in cases {
            assert_eq!(split_name(name), Ok((base.to_owned(), mode)), "{name}");
        }
        assert!(split_name("app?dqlite_read_mode=nowhere").is_err());
    }

    #[test]
    fn the_pragma_is_recognized_in_its_sqlite_forms() {
        let set = |m| Some(Some(Ok(m)));
        let stale = |ms| set(ReadMode::Stale(Duration::from_millis(ms)));
        let cases: &[(&str, Option<ReadModePragma>)] = &[
            (
                "PRAGMA dqlite_read_mode = follower",
                set(ReadMode::Follower),
            ),
            ("pragma DQLITE_READ_MODE='leader';", set(ReadMode::Leader)),
            (
                "  PRAGMA main.dqlite_read_mode(\"stale:100\") ; ",
                stale(100),
            ),
            ("PRAGMA dqlite_read_mode = stale:5", stale(5)),
            ("PRAGMA dqlite_read_mode", Some(None)),
            ("PRAGMA dqlite_read_mode;", Some(None)),
            ("PRAGMA dqlite_read_modes = leader", None),
            ("PRAGMA journal_mode", None),
            ("SELECT 'PRAGMA dqlite_read_mode'", None),
            (
                "PRAGMA dqlite_read_mode = follower; SELECT 1",
                Some(Some(Err(ParseReadModeError("follower; SELECT 1".into())))),
            ),
        ];
        for (sql, want) in cases {
            assert_eq!(&parse_pragma(sql), want, "{sql}");
        }
        assert!(matches!(
            parse_pragma("PRAGMA dqlite_read_mode = nowhere"),
            Some(Some(Err(_)))
        ));
    }
}
