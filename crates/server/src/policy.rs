//! What client SQL may not do: the statements that would break replication
//! or durability, refused when they are compiled, as current C dqlite
//! refuses them (its VFS installs an SQLite authorizer on every connection).
//!
//! The policy is enforced only on the connections the gateway opens for
//! clients; the store and the server set the pragmas they need on their
//! own connections before the authorizer is installed.

use std::cell::Cell;

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::Connection;

/// A pragma clients may not use, or may only read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeniedPragma {
    /// The pragma's name, lowercase.
    pub name: &'static str,
    /// Reading it (`PRAGMA name` without a value) is allowed.
    pub readable: bool,
}

/// The pragmas refused to clients, as in C dqlite (src/vfs.c,
/// `vfsAuthorizer`): journal mode, page size, checkpointing and syncing are
/// the engine's business (replication ships WAL-mode pages of one size and
/// makes commits durable through Raft); `busy_timeout` is the server's;
/// `read_uncommitted` and `locking_mode` would let a connection see or hold
/// what other connections must not.
pub const DENIED_PRAGMAS: &[DeniedPragma] = &[
    DeniedPragma {
        name: "journal_mode",
        readable: true,
    },
    DeniedPragma {
        name: "page_size",
        readable: true,
    },
    DeniedPragma {
        name: "wal_autocheckpoint",
        readable: true,
    },
    DeniedPragma {
        name: "synchronous",
        readable: true,
    },
    DeniedPragma {
        name: "wal_checkpoint",
        readable: false,
    },
    DeniedPragma {
        name: "busy_timeout",
        readable: false,
    },
    DeniedPragma {
        name: "read_uncommitted",
        readable: false,
    },
    DeniedPragma {
        name: "locking_mode",
        readable: false,
    },
];

/// Why a statement was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A denied pragma; `set` when it was given a value.
    Pragma {
        /// The pragma refused.
        pragma: DeniedPragma,
        /// It was given a value.
        set: bool,
    },
    /// ATTACH of anything but a temporary database.
    Attach,
}

impl Refusal {
    /// The message the client gets, after SQLite's own "not authorized".
    pub fn message(&self) -> String {
        match self {
            Refusal::Pragma { pragma, set: true } if pragma.readable => format!(
                "not authorized: PRAGMA {} cannot be changed on dqlite \
                 (the engine manages it for replication); reading it is allowed",
                pragma.name
            ),
            Refusal::Pragma { pragma, .. } => format!(
                "not authorized: PRAGMA {} is not allowed on dqlite \
                 (the engine manages it for replication)",
                pragma.name
            ),
            Refusal::Attach => "not authorized: ATTACH of a database file is not allowed on \
                                dqlite, only a temporary database (ATTACH '' AS name)"
                .to_owned(),
        }
    }
}

/// The policy for one pragma: `Some` when `PRAGMA name` (with `value` when
/// one is given) is refused. Names compare without case, as SQLite does.
pub fn check_pragma(name: &str, value: Option<&str>) -> Option<Refusal> {
    let pragma = DENIED_PRAGMAS
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case(name))?;
    let set = value.is_some();
    (set || !pragma.readable).then_some(Refusal::Pragma {
        pragma: *pragma,
        set,
    })
}

/// The policy for ATTACH: only a temporary database (empty file name) may
/// be attached, since a connection replicates exactly one database.
pub fn check_attach(filename: &str) -> Option<Refusal> {
    (!filename.is_empty()).then_some(Refusal::Attach)
}

fn check(action: &AuthAction<'_>) -> Option<Refusal> {
    match *action {
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => check_pragma(pragma_name, pragma_value),
        AuthAction::Attach { filename } => check_attach(filename),
        _ => None,
    }
}

thread_local! {
    /// The last refusal on this thread. SQLite calls the authorizer on the
    /// thread that compiles the statement, and the compile error is turned
    /// into the client's FAILURE on that same thread right after, which
    /// takes it (see `crate::sql::Failure`).
    static LAST_REFUSAL: Cell<Option<Refusal>> = const { Cell::new(None) };
}

/// Takes the refusal recorded by the authorizer on this thread, if any.
pub(crate) fn take_refusal() -> Option<Refusal> {
    LAST_REFUSAL.with(Cell::take)
}

fn authorize(ctx: AuthContext<'_>) -> Authorization {
    match check(&ctx.action) {
        Some(refusal) => {
            LAST_REFUSAL.with(|r| r.set(Some(refusal)));
            Authorization::Deny
        }
        None => Authorization::Allow,
    }
}

/// Installs the client policy on `conn`: from now on, statements it
/// refuses fail to compile with `SQLITE_AUTH`.
pub fn install(conn: &Connection) {
    conn.authorizer(Some(authorize));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pragma_table() {
        // (pragma, value, refused)
        let cases: &[(&str, Option<&str>, bool)] = &[
            ("journal_mode", None, false),
            ("journal_mode", Some("DELETE"), true),
            ("JOURNAL_MODE", Some("wal"), true),
            ("page_size", None, false),
            ("page_size", Some("8192"), true),
            ("wal_autocheckpoint", None, false),
            ("wal_autocheckpoint", Some("0"), true),
            ("synchronous", None, false),
            ("synchronous", Some("OFF"), true),
            ("wal_checkpoint", None, true),
            ("wal_checkpoint", Some("TRUNCATE"), true),
            ("busy_timeout", None, true),
            ("busy_timeout", Some("10"), true),
            ("read_uncommitted", None, true),
            ("read_uncommitted", Some("1"), true),
            ("locking_mode", None, true),
            ("locking_mode", Some("EXCLUSIVE"), true),
            ("foreign_keys", Some("ON"), false),
            ("table_info", Some("t"), false),
            ("user_version", Some("3"), false),
            ("cache_size", Some("-4000"), false),
        ];
        for &(name, value, refused) in cases {
            assert_eq!(
                check_pragma(name, value).is_some(),
                refused,
                "PRAGMA {name} {value:?}"
            );
        }
    }

    #[test]
    fn only_temporary_databases_attach() {
        assert_eq!(check_attach(""), None);
        assert_eq!(check_attach("/tmp/x.db"), Some(Refusal::Attach));
        assert_eq!(check_attach(":memory:"), Some(Refusal::Attach));
    }

    #[test]
    fn messages_name_the_pragma() {
        let r = check_pragma("Synchronous", Some("0")).unwrap();
        assert!(r.message().contains("PRAGMA synchronous cannot be changed"));
        let r = check_pragma("locking_mode", None).unwrap();
        assert!(r.message().contains("PRAGMA locking_mode is not allowed"));
        assert!(r.message().starts_with("not authorized"));
    }

    #[test]
    fn the_authorizer_refuses_at_compile_time_and_keeps_reads() {
        let conn = Connection::open_in_memory().unwrap();
        install(&conn);
        let err = conn.prepare("PRAGMA journal_mode = DELETE").unwrap_err();
        assert_eq!(
            err.sqlite_error_code(),
            Some(rusqlite::ErrorCode::AuthorizationForStatementDenied)
        );
        assert!(matches!(
            take_refusal(),
            Some(Refusal::Pragma { pragma, set: true }) if pragma.name == "journal_mode"
        ));
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "memory");
        assert_eq!(take_refusal(), None);
        // The table-valued form compiles the PRAGMA inside, which the
        // authorizer sees too: reads work, denied pragmas stay denied.
        let err = conn
            .query_row("SELECT * FROM pragma_locking_mode", [], |r| {
                r.get::<_, String>(0)
            })
            .unwrap_err();
        assert_eq!(
            err.sqlite_error_code(),
            Some(rusqlite::ErrorCode::AuthorizationForStatementDenied),
            "{err}"
        );
        let mode: String = conn
            .query_row("SELECT * FROM pragma_journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "memory");
    }
}
