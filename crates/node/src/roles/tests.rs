//! Data-driven scenarios for the role policy: `testdata/roles.txt` holds
//! one scenario per paragraph (members, health, targets) and the change the
//! policy must answer. Adding a case needs no code.
//!
//! ```text
//! # a comment
//! name: dead voter replaced by a standby
//! targets 3 3            (voters standbys; default 3 3)
//! leader 1
//! node 1 voter d=1 w=0   (d: failure domain, w: weight; `off`: offline)
//! node 2 voter off
//! adjust voter 4 5       (role then candidates best first, or `none`)
//! assume standby         (the role a joiner gets now)
//! handover 1 voter 4 5   (who takes over node 1's role, or `handover 1 none`)
//! ```

use std::collections::BTreeSet;

use super::*;

fn role(s: &str) -> Role {
    match s {
        "voter" => Role::Voter,
        "standby" => Role::StandBy,
        "spare" => Role::Spare,
        other => panic!("unknown role {other}"),
    }
}

fn change(words: &[&str]) -> Option<Change> {
    match words {
        ["none"] => None,
        [r, ids @ ..] => Some(Change {
            role: role(r),
            candidates: ids.iter().map(|i| i.parse().expect("id")).collect(),
        }),
        [] => panic!("empty expectation"),
    }
}

#[test]
fn scenarios() {
    let text = include_str!("testdata/roles.txt");
    let mut checked = 0;
    for block in text.split("\n\n") {
        let mut name = String::new();
        let mut nodes = Vec::new();
        let mut online = BTreeSet::new();
        let mut targets = Targets::default();
        let mut leader = 0;
        for line in block.lines().map(str::trim) {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                [] => {}
                [w, ..] if w.starts_with('#') => {}
                ["name:", rest @ ..] => name = rest.join(" "),
                ["targets", v, s] => {
                    targets = Targets {
                        voters: v.parse().expect("voters"),
                        standbys: s.parse().expect("standbys"),
                    }
                }
                ["leader", id] => leader = id.parse().expect("leader"),
                ["node", id, r, attrs @ ..] => {
                    let mut n = NodeInfo::new(id.parse().expect("id"), format!("n{id}"), role(r));
                    let mut up = true;
                    for a in attrs {
                        match a.split_once('=') {
                            Some(("d", v)) => n.failure_domain = v.parse().expect("domain"),
                            Some(("w", v)) => n.weight = v.parse().expect("weight"),
                            _ if *a == "off" => up = false,
                            _ => panic!("{name}: bad attribute {a}"),
                        }
                    }
                    if up {
                        online.insert(n.id);
                    }
                    nodes.push(n);
                }
                ["adjust", want @ ..] => {
                    let got = adjust(&nodes, &online, leader, targets);
                    assert_eq!(got, change(want), "{name}: adjust");
                    checked += 1;
                }
                ["assume", r] => {
                    assert_eq!(assume(&nodes, &online, targets), role(r), "{name}: assume");
                    checked += 1;
                }
                ["handover", id, want @ ..] => {
                    let got = handover(&nodes, &online, id.parse().expect("id"));
                    assert_eq!(got, change(want), "{name}: handover");
                    checked += 1;
                }
                _ => panic!("{name}: cannot parse {line:?}"),
            }
        }
    }
    assert!(checked >= 20, "only {checked} expectations checked");
}
