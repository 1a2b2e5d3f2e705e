//! The library's dynamic symbol table and soname: what a program linked
//! against C dqlite finds in it.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{built_library, run_with_timeout};

/// Names in the dynamic symbol table, from `nm -D`.
fn dynamic_symbols(file: &std::path::Path, defined: bool) -> Vec<(String, String)> {
    let mut cmd = Command::new("nm");
    cmd.arg("-D");
    if defined {
        cmd.arg("--defined-only");
    }
    cmd.arg(file);
    let out = run_with_timeout(cmd, Duration::from_secs(120));
    assert!(
        out.success(),
        "nm (apt install binutils): {}",
        out.describe()
    );
    out.stdout
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().rev();
            let name = f.next()?.to_string();
            let kind = f.next()?.to_string();
            Some((kind, name))
        })
        .collect()
}

#[test]
fn only_dqlite_symbols_are_exported() {
    let lib = built_library();
    let defined = dynamic_symbols(&lib, true);
    let leaked: Vec<_> = defined
        .iter()
        .filter(|(_, name)| !name.starts_with("dqlite_"))
        .collect();
    assert!(
        leaked.is_empty(),
        "symbols other than dqlite_* exported: {leaked:?}"
    );
    let names: Vec<&str> = defined.iter().map(|(_, n)| n.as_str()).collect();
    for wanted in [
        "dqlite_version_number",
        "dqlite_node_create",
        "dqlite_node_destroy",
        "dqlite_node_set_bind_address",
        "dqlite_node_get_bind_address",
        "dqlite_node_set_connect_func",
        "dqlite_node_set_network_latency",
        "dqlite_node_set_network_latency_ms",
        "dqlite_node_set_failure_domain",
        "dqlite_node_set_snapshot_params",
        "dqlite_node_start",
        "dqlite_node_stop",
        "dqlite_node_recover",
        "dqlite_node_recover_ext",
        "dqlite_node_errmsg",
        "dqlite_generate_node_id",
        "dqlite_node_enable_disk_mode",
        "dqlite_node_set_auto_recovery",
        "dqlite_node_describe_last_entry",
    ] {
        assert!(names.contains(&wanted), "{wanted} not exported: {names:?}");
    }
    // Every function are functions (T), not data.
    assert!(defined.iter().all(|(kind, _)| kind == "T"), "{defined:?}");
}

#[test]
fn every_dqlite_symbol_dqlite_demo_imports_is_defined() {
    let demo = std::path::Path::new("/usr/bin/dqlite-demo");
    assert!(
        demo.exists(),
        "apt-get install -y go-dqlite (this test never skips)"
    );
    let defined: Vec<String> = dynamic_symbols(&built_library(), true)
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    let imported: Vec<String> = dynamic_symbols(demo, false)
        .into_iter()
        .filter(|(kind, name)| kind == "U" && name.starts_with("dqlite_"))
        .map(|(_, n)| n)
        .collect();
    assert_eq!(
        imported.len(),
        13,
        "dqlite-demo imports changed: {imported:?}"
    );
    for name in &imported {
        assert!(
            defined.contains(name),
            "{name} imported by dqlite-demo, not defined"
        );
    }
}

#[test]
fn the_soname_is_libdqlite_so_0() {
    let mut cmd = Command::new("readelf");
    cmd.arg("-d").arg(built_library());
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    assert!(out.success(), "readelf: {}", out.describe());
    assert!(
        out.stdout.contains("Library soname: [libdqlite.so.0]"),
        "{}",
        out.stdout
    );
}
