//! Where SQL statements end: SQLite's `sqlite3_complete` rule, as a pure
//! function that also reports each boundary, so typed or read text can be
//! cut into statements on the client.
//!
//! rusqlite has no binding for `sqlite3_complete` and the crate forbids
//! unsafe code, so this is a port of its state machine (sqlite/src/
//! complete.c): a statement ends at a `;` outside quotes and comments,
//! except inside a `CREATE [TEMP] TRIGGER` body, which ends at `END;`.

/// Tokens of `sqlite3_complete`, in the column order of [`TRANSITIONS`].
#[derive(Clone, Copy)]
enum Token {
    Semi = 0,
    Space,
    Other,
    Explain,
    Create,
    Temp,
    Trigger,
    End,
}

/// The state after a complete statement (and before any text).
const START: u8 = 1;

/// `TRANSITIONS[state][token]`, states as in complete.c: 0 invalid,
/// 1 start, 2 normal, 3 explain, 4 create, 5 trigger, 6 semi, 7 end.
const TRANSITIONS: [[u8; 8]; 8] = [
    [1, 0, 2, 3, 4, 2, 2, 2],
    [1, 1, 2, 3, 4, 2, 2, 2],
    [1, 2, 2, 2, 2, 2, 2, 2],
    [1, 3, 3, 2, 4, 2, 2, 2],
    [1, 4, 2, 2, 2, 4, 5, 2],
    [6, 5, 5, 5, 5, 5, 5, 5],
    [6, 6, 5, 5, 5, 5, 5, 7],
    [1, 7, 5, 5, 5, 5, 5, 5],
];

/// Text cut at statement boundaries.
#[derive(Debug, PartialEq, Eq)]
pub struct Split<'a> {
    /// Complete statements, each with its `;`, in order.
    pub statements: Vec<&'a str>,
    /// What follows the last complete statement, unless it is only
    /// whitespace and comments: an unfinished statement.
    pub rest: &'a str,
}

/// Cuts `sql` into complete statements and an unfinished rest.
pub fn split(sql: &str) -> Split<'_> {
    let bytes = sql.as_bytes();
    let mut statements = Vec::new();
    let mut start = 0;
    let mut state = 0u8;
    let mut i = 0;
    // Each pass consumes at least one byte.
    while i < bytes.len() {
        let c = bytes[i];
        let token = match c {
            b';' => {
                i += 1;
                Token::Semi
            }
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => {
                i += 1;
                Token::Space
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => match find(bytes, i + 2, b"*/") {
                Some(end) => {
                    i = end + 2;
                    Token::Space
                }
                None => return unfinished(sql, statements, start, true),
            },
            b'-' if bytes.get(i + 1) == Some(&b'-') => match find(bytes, i + 2, b"\n") {
                Some(end) => {
                    i = end + 1;
                    Token::Space
                }
                None => return unfinished(sql, statements, start, state > START),
            },
            b'[' | b'`' | b'"' | b'\'' => {
                let close = if c == b'[' { b']' } else { c };
                match bytes[i + 1..].iter().position(|&b| b == close) {
                    // A doubled quote reads as two adjacent literals.
                    Some(n) => {
                        i += n + 2;
                        Token::Other
                    }
                    None => return unfinished(sql, statements, start, true),
                }
            }
            c if is_id_char(c) => {
                let begin = i;
                while i < bytes.len() && is_id_char(bytes[i]) {
                    i += 1;
                }
                keyword(&sql[begin..i])
            }
            _ => {
                i += 1;
                Token::Other
            }
        };
        state = TRANSITIONS[usize::from(state)][token as usize];
        if matches!(token, Token::Semi) && state == START {
            statements.push(&sql[start..i]);
            start = i;
        }
    }
    unfinished(sql, statements, start, state > START)
}

/// Whether `sql` is one or more complete statements (and nothing else
/// but whitespace and comments), as `sqlite3_complete` answers.
#[cfg(test)]
fn is_complete(sql: &str) -> bool {
    let split = split(sql);
    !split.statements.is_empty() && split.rest.is_empty()
}

/// `open`: the text since the last statement is more than whitespace and
/// comments (state 0 is text that has only ever been blank).
fn unfinished<'a>(sql: &'a str, statements: Vec<&'a str>, start: usize, open: bool) -> Split<'a> {
    Split {
        statements,
        rest: if open { &sql[start..] } else { "" },
    }
}

fn find(bytes: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    bytes
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|n| from + n)
}

/// Identifier bytes as complete.c counts them: letters, digits, `_`,
/// `$` and every byte of a multi-byte UTF-8 character.
fn is_id_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

fn keyword(word: &str) -> Token {
    let lower = word.to_ascii_lowercase();
    match lower.as_str() {
        "create" => Token::Create,
        "temp" | "temporary" => Token::Temp,
        "trigger" => Token::Trigger,
        "end" => Token::End,
        "explain" => Token::Explain,
        _ => Token::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completeness_matches_sqlite3_complete() {
        // sqlite3_complete's answers (checked with Python's
        // sqlite3.complete_statement on SQLite 3.40).
        let cases: &[(&str, bool)] = &[
            ("", false),
            ("   ", false),
            (";", true),
            ("SELECT 1", false),
            ("SELECT 1;", true),
            ("SELECT 1; ", true),
            ("SELECT 1; -- done", true),
            ("SELECT 1; /* open", false),
            ("SELECT ';'", false),
            ("SELECT ';';", true),
            ("SELECT \"a;b\";", true),
            ("SELECT [a;b];", true),
            ("SELECT `a;b`;", true),
            ("SELECT 'it''s';", true),
            ("SELECT 'open;", false),
            ("SELECT 1 -- ;", false),
            ("SELECT 1 -- ;\n;", true),
            ("SELECT /* ; */ 1;", true),
            ("CREATE TABLE t (x);", true),
            ("CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1;", false),
            (
                "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END;",
                true,
            ),
            (
                "create temp trigger tr after insert on t begin select 1; end",
                false,
            ),
            ("CREATE TEMPORARY TRIGGER x BEGIN SELECT 1; END ;", true),
            ("EXPLAIN CREATE TRIGGER x BEGIN SELECT 1; END;", true),
            // TRIGGER only counts right after CREATE [TEMP].
            ("SELECT trigger FROM t;", true),
            ("CREATE TABLE trigger (end);", true),
            ("SELECT 'héllo';", true),
        ];
        for (sql, complete) in cases {
            assert_eq!(is_complete(sql), *complete, "{sql:?}");
        }
    }

    #[test]
    fn statements_are_cut_at_their_semicolons() {
        let s = split("SELECT 1; SELECT 'a;b';\nINSERT INTO t VALUES (2);  SELECT");
        assert_eq!(
            s.statements,
            ["SELECT 1;", " SELECT 'a;b';", "\nINSERT INTO t VALUES (2);"]
        );
        assert_eq!(s.rest, "  SELECT");
        let trigger = "CREATE TRIGGER tr AFTER INSERT ON t BEGIN\n  UPDATE u SET n = n + 1;\nEND;";
        let text = format!("{trigger} SELECT 2;");
        let s = split(&text);
        assert_eq!(s.statements, [trigger, " SELECT 2;"]);
        assert_eq!(s.rest, "");
    }

    #[test]
    fn trailing_comments_and_blanks_are_not_a_statement() {
        assert_eq!(split("SELECT 1; -- note").rest, "");
        assert_eq!(split("SELECT 1; /* note */ \n").rest, "");
        assert_eq!(split("  \n").rest, "");
        assert_eq!(split("SELECT 1; /* open").rest, " /* open");
        assert_eq!(split("-- just a comment\n").statements.len(), 0);
    }

    #[test]
    fn unterminated_quotes_keep_the_statement_open() {
        for sql in [
            "SELECT '",
            "SELECT \"x",
            "SELECT [x",
            "SELECT `x",
            "SELECT /*",
        ] {
            let s = split(sql);
            assert!(s.statements.is_empty(), "{sql}");
            assert_eq!(s.rest, sql);
        }
        assert_eq!(split("SELECT 1; 'open").rest, " 'open");
    }
}
