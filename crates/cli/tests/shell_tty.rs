//! `dqlite-rs shell` on a real terminal: the shell runs in a tmux pane
//! against a real `dqlite-rs node`; the test types into the pane and
//! reads the screen back (`capture-pane`), waiting for expected text with
//! a deadline rather than sleeping.
//!
//! `scripts/test.sh` installs tmux. Without it this test fails (it never
//! skips).

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::{dqlite_rs_bin, Node};

/// How long the screen may take to show what a step waits for.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);
const PROMPT: &str = "dqlite-rs> ";

/// A tmux server of its own (`-L`), killed on drop.
struct Pane {
    socket: String,
}

impl Pane {
    fn start(command: &str, home: &Path) -> Pane {
        let socket = format!("dqlite-rs-test-{}", std::process::id());
        let pane = Pane { socket };
        let out = pane.tmux(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "160",
            "-y",
            "50",
            "-e",
            &format!("HOME={}", home.display()),
            command,
        ]);
        assert!(out.status.success(), "tmux new-session: {out:?}");
        pane
    }

    fn tmux(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux (scripts/test.sh installs it)")
    }

    fn screen(&self) -> String {
        let out = self.tmux(&["capture-pane", "-p", "-t", "t"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn type_line(&self, text: &str) {
        // tmux reads an argument ending in `;` as a command separator.
        let text = format!("{text} ");
        assert!(self
            .tmux(&["send-keys", "-t", "t", "-l", &text])
            .status
            .success());
        self.key("Enter");
    }

    fn key(&self, key: &str) {
        assert!(self.tmux(&["send-keys", "-t", "t", key]).status.success());
    }

    /// Waits until `done` holds for the screen; returns that screen.
    fn wait(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; screen:\n{screen}"
            );
            std::thread::sleep(POLL);
        }
    }

    /// Waits until the last non-blank line is the empty prompt.
    fn wait_prompt(&self, what: &str) -> String {
        self.wait(what, |s| last_line(s) == PROMPT.trim_end())
    }

    fn alive(&self) -> bool {
        self.tmux(&["has-session", "-t", "t"]).status.success()
    }
}

impl Drop for Pane {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

fn last_line(screen: &str) -> &str {
    screen
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim_end()
}

#[test]
fn multi_line_input_several_statements_ctrl_c_and_aligned_columns() {
    let node = Node::start(1);
    let home = tempfile::tempdir().unwrap();
    let command = format!(
        "{} shell -s {} demo",
        dqlite_rs_bin().display(),
        node.address
    );
    let pane = Pane::start(&command, home.path());
    pane.wait_prompt("the first prompt");

    // A statement over two lines: the second line gets the continuation
    // prompt, and nothing runs until the `;`.
    pane.type_line("CREATE TABLE t (id INTEGER PRIMARY KEY,");
    pane.wait("the continuation prompt", |s| last_line(s).trim() == "...>");
    pane.type_line("  name TEXT);");
    pane.wait_prompt("the prompt after CREATE TABLE");

    // Several statements on one line run in order; the table's columns
    // fit their widest value, not the first one.
    pane.type_line(
        "INSERT INTO t (name) VALUES ('a'); INSERT INTO t (name) VALUES ('a much longer name'); \
         SELECT id, name, length(name) AS len FROM t ORDER BY id;",
    );
    let screen = pane.wait("the two rows", |s| s.contains("a much longer name |"));
    let table = [
        "id | name               | len",
        "---+--------------------+----",
        " 1 | a                  |   1",
        " 2 | a much longer name |  18",
    ];
    let lines: Vec<&str> = screen.lines().map(str::trim_end).collect();
    assert!(
        lines.windows(table.len()).any(|w| w == table),
        "expected the aligned table {table:#?}; screen:\n{screen}"
    );
    pane.wait_prompt("the prompt after the table");

    // A million rows: Ctrl-C once they stream, and the prompt comes back.
    pane.type_line(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000) \
         SELECT x FROM c;",
    );
    pane.wait("rows past the first thousand", |s| {
        s.lines()
            .filter_map(|l| l.trim().parse::<u64>().ok())
            .any(|n| n > 1000)
    });
    pane.key("C-c");
    let screen = pane.wait("the interrupt to be reported", |s| {
        s.contains("Error: interrupted") && last_line(s) == PROMPT.trim_end()
    });
    // INTERRUPT ended the result and the connection stayed (an abandoned
    // call would say so), and the result did not run to its end.
    assert!(!screen.contains("before the server answered"), "{screen}");
    assert!(!screen.lines().any(|l| l.trim() == "1000000"), "{screen}");

    // The same session goes on.
    pane.type_line("SELECT 'after-' || 'interrupt' AS marker, count(*) AS n FROM t;");
    pane.wait("a query after the interrupt", |s| {
        s.lines().any(|l| l.trim_end() == "after-interrupt | 2")
    });
    pane.wait_prompt("the prompt after the last query");

    // Ctrl-D at the prompt leaves the shell (and so ends the pane).
    pane.key("C-d");
    let deadline = Instant::now() + STEP_TIMEOUT;
    while pane.alive() {
        assert!(
            Instant::now() < deadline,
            "the shell did not exit on Ctrl-D"
        );
        std::thread::sleep(POLL);
    }
}
