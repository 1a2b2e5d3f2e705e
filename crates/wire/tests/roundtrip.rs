//! Property tests: every message round-trips, and no byte string makes a
//! decoder panic.

use dqlite_wire::*;
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,40}"
}

fn value(param: bool) -> impl Strategy<Value = Value> {
    let float = prop_oneof![
        prop::num::f64::NORMAL,
        prop::num::f64::SUBNORMAL,
        prop::num::f64::ZERO,
        prop::num::f64::INFINITE
    ];
    let mut options = vec![
        any::<i64>().prop_map(Value::Integer).boxed(),
        float.prop_map(Value::Float).boxed(),
        text().prop_map(Value::Text).boxed(),
        prop::collection::vec(any::<u8>(), 0..40)
            .prop_map(Value::Blob)
            .boxed(),
        Just(Value::Null).boxed(),
        text().prop_map(Value::Iso8601).boxed(),
        any::<bool>().prop_map(Value::Boolean).boxed(),
    ];
    if !param {
        options.push(any::<i64>().prop_map(Value::UnixTime).boxed());
    }
    proptest::strategy::Union::new(options)
}

fn params() -> impl Strategy<Value = Vec<Value>> {
    prop_oneof![
        prop::collection::vec(value(true), 0..12),
        prop::collection::vec(value(true), 250..300),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Leader),
        any::<u64>().prop_map(|id| Request::Client { id }),
        any::<u64>().prop_map(|timestamp| Request::Heartbeat { timestamp }),
        (text(), any::<u64>(), text()).prop_map(|(name, flags, vfs)| Request::Open {
            name,
            flags,
            vfs
        }),
        (any::<u64>(), text(), any::<bool>()).prop_map(|(db, sql, with_tail)| Request::Prepare {
            db,
            sql,
            with_tail
        }),
        (any::<u32>(), any::<u32>(), params()).prop_map(|(db, stmt, params)| Request::Exec {
            db,
            stmt,
            params
        }),
        (any::<u32>(), any::<u32>(), params()).prop_map(|(db, stmt, params)| Request::Query {
            db,
            stmt,
            params
        }),
        (any::<u32>(), any::<u32>()).prop_map(|(db, stmt)| Request::Finalize { db, stmt }),
        (any::<u64>(), text(), params()).prop_map(|(db, sql, params)| Request::ExecSql {
            db,
            sql,
            params
        }),
        (any::<u64>(), text(), params()).prop_map(|(db, sql, params)| Request::QuerySql {
            db,
            sql,
            params
        }),
        any::<u64>().prop_map(|db| Request::Interrupt { db }),
        (any::<u64>(), text()).prop_map(|(id, address)| Request::Connect { id, address }),
        (any::<u64>(), text()).prop_map(|(id, address)| Request::Add { id, address }),
        (any::<u64>(), proptest::option::of(any::<u64>()))
            .prop_map(|(id, role)| Request::Assign { id, role }),
        any::<u64>().prop_map(|id| Request::Remove { id }),
        text().prop_map(|name| Request::Dump { name }),
        any::<u64>().prop_map(|format| Request::Cluster { format }),
        any::<u64>().prop_map(|id| Request::Transfer { id }),
        any::<u64>().prop_map(|format| Request::Describe { format }),
        any::<u64>().prop_map(|weight| Request::Weight { weight }),
    ]
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Voter), Just(Role::StandBy), Just(Role::Spare)]
}

fn response() -> impl Strategy<Value = (Response, DecodeContext)> {
    let plain = DecodeContext::default();
    let rows = (0usize..20).prop_flat_map(|ncols| {
        (
            prop::collection::vec(text(), ncols),
            prop::collection::vec(
                prop::collection::vec(value(false), ncols),
                if ncols == 0 { 0..1 } else { 0..6 },
            ),
            any::<bool>(),
        )
    });
    prop_oneof![
        (any::<u64>(), text())
            .prop_map(move |(code, message)| (Response::Failure { code, message }, plain)),
        (any::<u64>(), text())
            .prop_map(move |(id, address)| (Response::Server { id, address }, plain)),
        text().prop_map(|address| (
            Response::ServerLegacy { address },
            DecodeContext {
                legacy: true,
                cluster_format: 1
            }
        )),
        any::<u64>().prop_map(move |h| (
            Response::Welcome {
                heartbeat_timeout: h
            },
            plain
        )),
        (
            0u64..2,
            prop::collection::vec((any::<u64>(), text(), role()), 0..5)
        )
            .prop_map(|(format, nodes)| {
                let nodes = nodes
                    .into_iter()
                    .map(|(id, address, role)| NodeInfo {
                        id,
                        address,
                        role: if format == 1 { role } else { Role::Voter },
                        ..Default::default()
                    })
                    .collect();
                (
                    Response::Servers { format, nodes },
                    DecodeContext {
                        legacy: false,
                        cluster_format: format,
                    },
                )
            }),
        any::<u32>().prop_map(move |id| (Response::Db { id }, plain)),
        (
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            proptest::option::of(any::<u64>())
        )
            .prop_map(move |(db, id, params, tail)| (
                Response::Stmt {
                    db,
                    id,
                    params,
                    tail
                },
                plain
            )),
        (any::<u64>(), any::<u64>()).prop_map(move |(a, b)| (
            Response::Result {
                last_insert_id: a,
                rows_affected: b
            },
            plain
        )),
        rows.prop_map(move |(columns, rows, more)| (
            Response::Rows(Rows {
                columns,
                rows,
                more
            }),
            plain
        )),
        Just((Response::Empty, plain)),
        prop::collection::vec((text(), prop::collection::vec(any::<u64>(), 0..8)), 0..3).prop_map(
            move |files| (
                Response::Files(
                    files
                        .into_iter()
                        .map(|(name, words)| File {
                            name,
                            data: words.iter().flat_map(|w| w.to_le_bytes()).collect(),
                        })
                        .collect()
                ),
                plain
            )
        ),
        (any::<u64>(), any::<u64>()).prop_map(move |(f, w)| (
            Response::Metadata {
                failure_domain: f,
                weight: w
            },
            plain
        )),
    ]
}

fn split(bytes: &[u8]) -> (Header, &[u8]) {
    let header = Header::decode(bytes[..8].try_into().unwrap());
    assert_eq!(header.body_len() as usize, bytes.len() - 8);
    assert_eq!(bytes.len() % 8, 0);
    (header, &bytes[8..])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn requests_round_trip(req in request()) {
        let mut out = Vec::new();
        req.encode(&mut out);
        let (header, body) = split(&out);
        prop_assert_eq!(Request::decode(&header, body), Ok(req));
    }

    #[test]
    fn responses_round_trip((resp, ctx) in response()) {
        let mut out = Vec::new();
        resp.encode(&mut out);
        let (header, body) = split(&out);
        prop_assert_eq!(Response::decode(&header, body, ctx), Ok(resp));
    }

    #[test]
    fn arbitrary_bytes_never_panic(kind in 0u8..24, schema in 0u8..3, body in prop::collection::vec(any::<u8>(), 0..200)) {
        let header = Header { words: (body.len() / 8) as u32, kind, schema };
        let _ = Request::decode(&header, &body);
        let _ = Response::decode(&header, &body, DecodeContext::default());
    }

    #[test]
    fn truncated_requests_fail_cleanly(req in request(), cut in any::<prop::sample::Index>()) {
        let mut out = Vec::new();
        req.encode(&mut out);
        let (header, body) = split(&out);
        let cut = cut.index(body.len());
        // Any prefix either decodes (trailing fields are optional) or
        // errors; it never panics.
        let _ = Request::decode(&header, &body[..cut]);
    }
}
