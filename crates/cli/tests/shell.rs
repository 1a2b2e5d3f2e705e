//! `dqlite-rs shell` as a user runs it: a real `dqlite-rs node` process,
//! the shell binary with `-c`, a positional command or SQL on standard
//! input; asserts on stdout, stderr and the exit status.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{dqlite_rs_bin, run_with_timeout, Node, Output};

const SHELL_TIMEOUT: Duration = Duration::from_secs(60);

fn shell(
    node: &Node,
    extra: &[&str],
    stdin: Option<&str>,
    dir: Option<&std::path::Path>,
) -> Output {
    let mut cmd = Command::new(dqlite_rs_bin());
    cmd.args(["shell", "-s", &node.address]).args(extra);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let out = run_with_timeout(cmd, stdin.map(str::as_bytes), SHELL_TIMEOUT);
    assert!(!out.timed_out(), "shell hung:\n{}", out.describe());
    out
}

#[test]
fn one_command_with_command_flag_and_its_exit_status() {
    let node = Node::start(1);
    let out = shell(
        &node,
        &["demo", "--command", "CREATE TABLE t (x)"],
        None,
        None,
    );
    assert!(out.success(), "{}", out.describe());
    assert_eq!(out.stdout, "");
    let out = shell(
        &node,
        &["demo", "--command", "INSERT INTO t VALUES (1), (22)"],
        None,
        None,
    );
    assert!(out.success(), "{}", out.describe());
    let out = shell(
        &node,
        &["demo", "--command", "SELECT x FROM t ORDER BY x"],
        None,
        None,
    );
    assert!(out.success(), "{}", out.describe());
    assert_eq!(out.stdout, "x\n--\n 1\n22\n");
    // The dqlite shell's form: the command after the database name.
    let out = shell(&node, &["demo", "SELECT count(*) AS n FROM t"], None, None);
    assert_eq!(out.stdout, "n\n-\n2\n", "{}", out.describe());
    let out = shell(&node, &["demo", "--command", "SELEC 1"], None, None);
    assert!(!out.success(), "{}", out.describe());
    assert!(
        out.stderr.starts_with("Error: ") && out.stderr.contains("syntax error"),
        "{}",
        out.describe()
    );
}

#[test]
fn a_script_on_stdin_runs_every_line_and_survives_errors() {
    let node = Node::start(1);
    let work = tempfile::tempdir().unwrap();
    let script = format!(
        "CREATE TABLE t (i INTEGER, f REAL, s TEXT, b BLOB, n);\n\
         INSERT INTO t VALUES (9223372036854775807, 1.5, 'héllo ✓', x'00ff', NULL);\n\
         INSERT INTO t VALUES (-9223372036854775808, -0.5, '', x'', 3);\n\
         SELECT * FROM t;\n\
         SELEC 1;\n\
         \n\
         .leader\n\
         .cluster\n\
         .weight {a} 5\n\
         .describe {a}\n\
         .nope\n\
         .dump\n\
         SELECT count(*) AS n FROM t;\n\
         .quit\n\
         SELECT 'not reached'\n",
        a = node.address
    );
    let out = shell(&node, &["demo"], Some(&script), Some(work.path()));
    // One line failed, so the status is non-zero, but every other line ran.
    assert!(!out.success(), "{}", out.describe());
    let expected = format!(
        "\
i                    | f    | s       | b       | n
---------------------+------+---------+---------+-----
 9223372036854775807 |  1.5 | héllo ✓ | x'00ff' | NULL
-9223372036854775808 | -0.5 |         | x''     |    3
{a}
id | address         | role
---+-----------------+------
1  | {a} | voter
{a}|0|5
wrote {d}/demo (",
        a = node.address,
        d = work.path().display()
    );
    assert!(out.stdout.starts_with(&expected), "{}", out.describe());
    assert!(out.stdout.ends_with("n\n-\n2\n"), "{}", out.describe());
    assert!(!out.stdout.contains("not reached"));
    let errors: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(errors.len(), 2, "{}", out.describe());
    assert!(errors[0].starts_with("Error: ") && errors[0].contains("syntax error"));
    assert_eq!(errors[1], "Error: unknown command .nope; try .help");
    let dumped = std::fs::read(work.path().join("demo")).unwrap();
    assert!(dumped.starts_with(b"SQLite format 3\0"));
    assert!(work.path().join("demo-wal").exists());
}

#[test]
fn json_output_is_json() {
    let node = Node::start(1);
    let script = "CREATE TABLE t (k TEXT, v);\n\
                  INSERT INTO t VALUES ('a', 1.25), ('b\"', NULL), ('c', x'0a');\n\
                  SELECT k, v FROM t ORDER BY k\n";
    let out = shell(&node, &["-f", "json", "demo"], Some(script), None);
    assert!(out.success(), "{}", out.describe());
    let rows: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        rows,
        serde_json::json!([
            {"k": "a", "v": 1.25},
            {"k": "b\"", "v": null},
            {"k": "c", "v": "0a"},
        ])
    );
    let out = shell(
        &node,
        &["-f", "json", "demo", "--command", ".cluster"],
        None,
        None,
    );
    let cluster: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(cluster[0]["address"], node.address.as_str());
    assert_eq!(cluster[0]["role"], "voter");
}

#[test]
fn an_unreachable_cluster_fails_within_the_timeout() {
    let address = format!("127.0.0.1:{}", support::free_port());
    let mut cmd = Command::new(dqlite_rs_bin());
    cmd.args([
        "shell",
        "-s",
        &address,
        "--timeout",
        "1",
        "demo",
        "--command",
        "SELECT 1",
    ]);
    let out = run_with_timeout(cmd, None, SHELL_TIMEOUT);
    assert!(!out.success(), "{}", out.describe());
    // Nothing listens: said at once, with the address, not after retries.
    assert!(out.elapsed < Duration::from_secs(2), "{}", out.describe());
    assert_eq!(
        out.stderr.trim_end(),
        format!(
            "Error: no dqlite node is listening at {address}: connection refused; \
             check that the nodes are running and the addresses are right"
        ),
        "{}",
        out.describe()
    );
}

#[test]
fn statements_span_lines_and_share_lines() {
    let node = Node::start(1);
    // A statement over three lines, a trigger whose body holds `;`, two
    // statements and a comment on one line, and a last statement without
    // its `;` (run at the end of the input).
    let script = "CREATE TABLE t (\n  id INTEGER PRIMARY KEY,\n  name TEXT);\n\
                  CREATE TABLE log (n);\n\
                  CREATE TRIGGER tr AFTER INSERT ON t BEGIN\n  INSERT INTO log VALUES (new.id);\nEND;\n\
                  INSERT INTO t (name) VALUES ('a;b'); SELECT name FROM t; -- done\n\
                  SELECT count(*) AS logged\nFROM log";
    let out = shell(&node, &["demo"], Some(script), None);
    assert!(out.success(), "{}", out.describe());
    assert_eq!(out.stdout, "name\n----\na;b\nlogged\n------\n     1\n");
    // -c takes several statements too, and goes on after a failing one.
    let out = shell(
        &node,
        &["demo", "--command", "SELECT 1 AS a; SELEC 2; SELECT 3 AS c"],
        None,
        None,
    );
    assert!(!out.success(), "{}", out.describe());
    assert_eq!(out.stdout, "a\n-\n1\nc\n-\n3\n", "{}", out.describe());
    assert!(out.stderr.contains("syntax error"), "{}", out.describe());
}

#[test]
fn dot_commands_for_modes_timer_files_and_schema() {
    let node = Node::start(1);
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("setup.sql");
    std::fs::write(
        &file,
        "CREATE TABLE b (x);\nCREATE VIEW v AS\n  SELECT x FROM b;\nINSERT INTO b VALUES (1), ('q,\"');\n.quit\nSELECT 'not reached';\n",
    )
    .unwrap();
    let script = format!(
        ".read {}\n.tables\n.schema b\n.mode csv\nSELECT x, NULL AS n FROM b ORDER BY rowid;\n\
         .mode line\nSELECT 1 AS one, 'two' AS second;\n.mode json\nSELECT 5 AS five;\n\
         .mode tabular\n.timer on\nSELECT 7 AS seven;\n.timer off\nSELECT 8 AS eight;\n\
         .read {}/missing.sql\n",
        file.display(),
        work.path().display()
    );
    let out = shell(&node, &["demo"], Some(&script), None);
    let expected = concat!(
        "b\nv\nCREATE TABLE b (x);\n",
        "x,n\n1,\n\"q,\"\"\",\n",
        "   one = 1\nsecond = two\n",
        "[\n{\"five\":5}\n]\n",
        "seven\n-----\n    7\n",
    );
    assert!(out.stdout.starts_with(expected), "{}", out.describe());
    let rest = &out.stdout[expected.len()..];
    assert!(rest.starts_with("Run Time: real "), "{}", out.describe());
    assert!(
        rest.ends_with("\neight\n-----\n    8\n"),
        "{}",
        out.describe()
    );
    assert!(!out.stdout.contains("not reached"), "{}", out.describe());
    // Only the missing file failed.
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.describe());
    assert!(
        out.stderr.starts_with(&format!(
            "Error: cannot read {}/missing.sql: No such file",
            work.path().display()
        )),
        "{}",
        out.describe()
    );
}
