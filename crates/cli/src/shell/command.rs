//! What input asks for: a dot-command or a SQL statement, and for SQL
//! whether it returns rows. Pure, unit-tested.

use std::path::PathBuf;

use anyhow::{bail, Context};

use super::format::Format;

/// One parsed command: a dot-command line or one SQL statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Nothing to do (blank line).
    Nothing,
    /// `.help`
    Help,
    /// `.quit` or `.exit`
    Quit,
    /// `.leader`
    Leader,
    /// `.cluster`
    Cluster,
    /// `.describe ADDR`
    Describe(String),
    /// `.weight ADDR N`
    Weight(String, u64),
    /// `.dump [ADDR]`: from ADDR, or from the leader.
    Dump(Option<String>),
    /// `.remove ADDR`
    Remove(String),
    /// `.timer on|off`
    Timer(bool),
    /// `.mode FORMAT`
    Mode(Format),
    /// `.read FILE`
    Read(PathBuf),
    /// `.tables`
    Tables,
    /// `.schema [TABLE]`: a `LIKE` pattern on the table name.
    Schema(Option<String>),
    /// SQL run as a query (rows are printed).
    Query(String),
    /// SQL run as a statement (nothing printed).
    Exec(String),
}

/// The help text of the dot-commands.
pub const HELP: &str = "\
.cluster              show the cluster members (id, address, role)
.describe ADDR        show the failure domain and weight of the node at ADDR
.dump [ADDR]          write the database files (main and WAL) into the
                      current directory, from ADDR or else the leader
.exit, .quit          leave the shell
.help                 show this help
.leader               show the leader's address
.mode MODE            output as tabular, json, csv or line
.read FILE            run the SQL and dot-commands in FILE
.remove ADDR          remove the node at ADDR from the cluster
.schema [TABLE]       show the CREATE statements (of tables like TABLE)
.tables               list the tables and views
.timer on|off         show how long each SQL statement took
.weight ADDR N        set the weight of the node at ADDR to N
Anything else is SQL: a statement ends with `;` and may span lines;
several statements on a line run in order. Ctrl-C stops the running
statement, Ctrl-D leaves.";

/// One SQL statement as a command.
pub fn statement(sql: &str) -> Command {
    let sql = sql.trim();
    if sql.is_empty() || sql == ";" {
        Command::Nothing
    } else if returns_rows(sql) {
        Command::Query(sql.to_owned())
    } else {
        Command::Exec(sql.to_owned())
    }
}

/// Parses one line: a dot-command, or else one SQL statement.
pub fn parse(line: &str) -> anyhow::Result<Command> {
    let line = line.trim();
    if !line.starts_with('.') {
        return Ok(statement(line));
    }
    let mut words = line.split_whitespace();
    let name = words.next().unwrap_or_default().to_ascii_lowercase();
    let args: Vec<&str> = words.collect();
    let arity = |n: usize, usage: &str| -> anyhow::Result<()> {
        if args.len() != n {
            bail!("usage: {usage}");
        }
        Ok(())
    };
    Ok(match name.as_str() {
        ".help" => Command::Help,
        ".quit" | ".exit" => Command::Quit,
        ".leader" => {
            arity(0, ".leader")?;
            Command::Leader
        }
        ".cluster" => {
            arity(0, ".cluster")?;
            Command::Cluster
        }
        ".describe" => {
            arity(1, ".describe ADDR")?;
            Command::Describe(args[0].to_owned())
        }
        ".weight" => {
            arity(2, ".weight ADDR N")?;
            let weight = args[1]
                .parse()
                .with_context(|| format!("bad weight {:?}", args[1]))?;
            Command::Weight(args[0].to_owned(), weight)
        }
        ".dump" => {
            if args.len() > 1 {
                bail!("usage: .dump [ADDR]");
            }
            Command::Dump(args.first().map(|a| a.to_string()))
        }
        ".remove" => {
            arity(1, ".remove ADDR")?;
            Command::Remove(args[0].to_owned())
        }
        ".timer" => {
            arity(1, ".timer on|off")?;
            match args[0].to_ascii_lowercase().as_str() {
                "on" => Command::Timer(true),
                "off" => Command::Timer(false),
                _ => bail!("usage: .timer on|off"),
            }
        }
        ".mode" => {
            arity(1, ".mode tabular|json|csv|line")?;
            match Format::from_name(args[0]) {
                Some(format) => Command::Mode(format),
                None => bail!("unknown mode {:?}; use tabular, json, csv or line", args[0]),
            }
        }
        ".read" => {
            // The rest of the line, so a path may hold spaces.
            let path = line[name.len()..].trim();
            if path.is_empty() {
                bail!("usage: .read FILE");
            }
            Command::Read(PathBuf::from(path))
        }
        ".tables" => {
            arity(0, ".tables")?;
            Command::Tables
        }
        ".schema" => {
            if args.len() > 1 {
                bail!("usage: .schema [TABLE]");
            }
            Command::Schema(args.first().map(|a| a.to_string()))
        }
        other => bail!("unknown command {other}; try .help"),
    })
}

/// Whether SQL text returns rows, decided from its words as the dqlite
/// shell does, extended: it does if its first keyword is SELECT, PRAGMA,
/// WITH, EXPLAIN or VALUES, or if it has a RETURNING clause. Comments and
/// quoted strings and names are skipped.
///
/// Why words rather than asking the server: PREPARE's answer has no
/// column count, and running everything as a query fails on C dqlite
/// 1.11 for statements without columns ("not an error", without running
/// them). The shell covers the remaining misses (a PRAGMA that sets, a
/// WITH ... INSERT) by retrying as a statement when a 1.11 server gives
/// that answer, and current servers answer such queries with zero columns.
pub fn returns_rows(sql: &str) -> bool {
    let words = words(sql);
    let first = words.first().map(|w| w.to_ascii_uppercase());
    matches!(
        first.as_deref(),
        Some("SELECT" | "PRAGMA" | "WITH" | "EXPLAIN" | "VALUES")
    ) || words.iter().any(|w| w.eq_ignore_ascii_case("RETURNING"))
}

/// The bare words (keywords and unquoted names) of SQL text, skipping
/// comments, string literals and quoted names.
fn words(sql: &str) -> Vec<&str> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'-' && bytes.get(i + 1) == Some(&b'-') {
            i = sql[i..].find('\n').map_or(bytes.len(), |n| i + n + 1);
        } else if c == b'/' && bytes.get(i + 1) == Some(&b'*') {
            i = sql[i + 2..]
                .find("*/")
                .map_or(bytes.len(), |n| i + 2 + n + 2);
        } else if matches!(c, b'\'' | b'"' | b'`' | b'[') {
            let close = if c == b'[' { b']' } else { c };
            i += 1;
            while i < bytes.len() && bytes[i] != close {
                i += 1;
            }
            i += 1; // A doubled quote just starts the next literal.
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            out.push(&sql[start..i]);
        } else {
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_returning_statements() {
        for sql in [
            "SELECT 1",
            "  select * from t",
            "-- comment\nSELECT 1",
            "/* c */ pragma table_info(t)",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "EXPLAIN QUERY PLAN SELECT 1",
            "VALUES (1), (2)",
            "INSERT INTO t VALUES (1) RETURNING id",
            "delete from t returning *",
        ] {
            assert!(returns_rows(sql), "{sql}");
        }
    }

    #[test]
    fn other_statements() {
        for sql in [
            "CREATE TABLE t (x)",
            "INSERT INTO t VALUES ('SELECT')",
            "INSERT INTO t VALUES ('x RETURNING y')",
            "UPDATE \"returning\" SET a = 1",
            "BEGIN",
            "-- SELECT\nDELETE FROM t",
            "/* SELECT */ DROP TABLE t",
            "INSERT INTO t VALUES ('it''s') ",
        ] {
            assert!(!returns_rows(sql), "{sql}");
        }
    }

    #[test]
    fn unterminated_quotes_and_comments_do_not_panic() {
        for sql in ["'", "\"abc", "/*", "--", "[", "SELECT '"] {
            let _ = returns_rows(sql);
        }
        assert!(returns_rows("SELECT 'unterminated"));
    }

    #[test]
    fn dot_commands() {
        assert_eq!(parse("").unwrap(), Command::Nothing);
        assert_eq!(parse("  .HELP ").unwrap(), Command::Help);
        assert_eq!(parse(".exit").unwrap(), Command::Quit);
        assert_eq!(parse(".quit").unwrap(), Command::Quit);
        assert_eq!(parse(".leader").unwrap(), Command::Leader);
        assert_eq!(parse(".cluster").unwrap(), Command::Cluster);
        assert_eq!(
            parse(".describe 127.0.0.1:9001").unwrap(),
            Command::Describe("127.0.0.1:9001".into())
        );
        assert_eq!(
            parse(".weight  127.0.0.1:9001   3").unwrap(),
            Command::Weight("127.0.0.1:9001".into(), 3)
        );
        assert_eq!(parse(".dump").unwrap(), Command::Dump(None));
        assert_eq!(
            parse(".dump a:1").unwrap(),
            Command::Dump(Some("a:1".into()))
        );
        assert_eq!(parse(".remove a:1").unwrap(), Command::Remove("a:1".into()));
        assert_eq!(parse(".timer ON").unwrap(), Command::Timer(true));
        assert_eq!(parse(".timer off").unwrap(), Command::Timer(false));
        assert_eq!(parse(".mode csv").unwrap(), Command::Mode(Format::Csv));
        assert_eq!(
            parse(".read my file.sql").unwrap(),
            Command::Read("my file.sql".into())
        );
        assert_eq!(parse(".tables").unwrap(), Command::Tables);
        assert_eq!(parse(".schema").unwrap(), Command::Schema(None));
        assert_eq!(
            parse(".schema t%").unwrap(),
            Command::Schema(Some("t%".into()))
        );
        assert_eq!(statement(" ; "), Command::Nothing);
        assert_eq!(statement("SELECT 1;"), Command::Query("SELECT 1;".into()));
        assert_eq!(
            parse("SELECT 1").unwrap(),
            Command::Query("SELECT 1".into())
        );
        assert_eq!(
            parse("CREATE TABLE t (x);").unwrap(),
            Command::Exec("CREATE TABLE t (x);".into())
        );
    }

    #[test]
    fn bad_dot_commands() {
        assert!(parse(".describe").is_err());
        assert!(parse(".weight a:1").is_err());
        assert!(parse(".weight a:1 -3").is_err());
        assert!(parse(".weight a:1 x").is_err());
        assert!(parse(".dump a b").is_err());
        assert!(parse(".leader extra").is_err());
        assert!(parse(".timer maybe").is_err());
        assert!(parse(".mode box").is_err());
        assert!(parse(".read").is_err());
        assert!(parse(".schema a b").is_err());
        let err = parse(".nope").unwrap_err().to_string();
        assert_eq!(err, "unknown command .nope; try .help");
    }
}
