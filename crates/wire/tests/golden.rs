//! Byte-for-byte checks against the captures in §12 of the wire reference.

use dqlite_wire::*;

fn decode_req(bytes: &[u8]) -> Request {
    let header = Header::decode(bytes[..8].try_into().unwrap());
    assert_eq!(header.body_len() as usize, bytes.len() - 8, "header length");
    Request::decode(&header, &bytes[8..]).unwrap()
}

fn decode_resp(bytes: &[u8], ctx: DecodeContext) -> Response {
    let header = Header::decode(bytes[..8].try_into().unwrap());
    assert_eq!(header.body_len() as usize, bytes.len() - 8, "header length");
    Response::decode(&header, &bytes[8..], ctx).unwrap()
}

fn enc_req(r: &Request) -> Vec<u8> {
    let mut out = Vec::new();
    r.encode(&mut out);
    out
}

fn enc_resp(r: &Response) -> Vec<u8> {
    let mut out = Vec::new();
    r.encode(&mut out);
    out
}

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .filter(|t| *t != "|")
        .map(|t| u8::from_str_radix(t, 16).unwrap())
        .collect()
}

#[test]
fn handshake_values() {
    assert_eq!(PROTOCOL_VERSION.to_le_bytes(), [1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        PROTOCOL_VERSION_LEGACY.to_le_bytes().to_vec(),
        hex("e5 3f 43 60 d7 4d 10 86")
    );
}

#[test]
fn leader_request_and_server_response() {
    let req = hex("01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00");
    assert_eq!(decode_req(&req), Request::Leader);
    assert_eq!(enc_req(&Request::Leader), req);

    let resp = hex("03 00 00 00 01 00 00 00
         01 00 00 00 00 00 00 00
         31 32 37 2e 30 2e 30 2e
         31 3a 31 39 30 30 32 00");
    let want = Response::Server {
        id: 1,
        address: "127.0.0.1:19002".into(),
    };
    assert_eq!(decode_resp(&resp, DecodeContext::default()), want);
    assert_eq!(enc_resp(&want), resp);
}

#[test]
fn legacy_leader_response() {
    let mut resp = hex("02 00 00 00 01 00 00 00");
    resp.extend_from_slice(b"127.0.0.1:19001\0");
    let want = Response::ServerLegacy {
        address: "127.0.0.1:19001".into(),
    };
    let ctx = DecodeContext {
        legacy: true,
        ..Default::default()
    };
    assert_eq!(decode_resp(&resp, ctx), want);
    assert_eq!(enc_resp(&want), resp);
}

#[test]
fn client_and_welcome() {
    let req = hex("01 00 00 00 01 00 00 00 | 00 00 00 00 00 00 00 00");
    assert_eq!(decode_req(&req), Request::Client { id: 0 });
    let resp = hex("01 00 00 00 02 00 00 00 | 98 3a 00 00 00 00 00 00");
    let want = Response::Welcome {
        heartbeat_timeout: 15000,
    };
    assert_eq!(decode_resp(&resp, DecodeContext::default()), want);
    assert_eq!(enc_resp(&want), resp);
}

#[test]
fn open_and_db() {
    let req = hex("05 00 00 00 03 00 00 00
         70 72 6f 62 65 2e 64 62 | 00 00 00 00 00 00 00 00
         00 00 00 00 00 00 00 00
         76 6f 6c 61 74 69 6c 65 | 00 00 00 00 00 00 00 00");
    let want = Request::Open {
        name: "probe.db".into(),
        flags: 0,
        vfs: "volatile".into(),
    };
    assert_eq!(decode_req(&req), want);
    assert_eq!(enc_req(&want), req);
    let resp = hex("01 00 00 00 04 00 00 00 | 00 00 00 00 00 00 00 00");
    assert_eq!(
        decode_resp(&resp, DecodeContext::default()),
        Response::Db { id: 0 }
    );
    assert_eq!(enc_resp(&Response::Db { id: 0 }), resp);
}

#[test]
fn stmt_exec_result() {
    let stmt = hex("02 00 00 00 05 00 00 00 | 00 00 00 00 01 00 00 00 | 01 00 00 00 00 00 00 00");
    let want = Response::Stmt {
        db: 0,
        id: 1,
        params: 1,
        tail: None,
    };
    assert_eq!(decode_resp(&stmt, DecodeContext::default()), want);
    assert_eq!(enc_resp(&want), stmt);

    let exec = hex("03 00 00 00 05 00 00 00
         00 00 00 00 01 00 00 00
         01 01 00 00 00 00 00 00
         2a 00 00 00 00 00 00 00");
    let want = Request::Exec {
        db: 0,
        stmt: 1,
        params: vec![Value::Integer(42)],
    };
    assert_eq!(decode_req(&exec), want);
    assert_eq!(enc_req(&want), exec);

    let result = hex("02 00 00 00 06 00 00 00 | 03 00 00 00 00 00 00 00 | 01 00 00 00 00 00 00 00");
    let want = Response::Result {
        last_insert_id: 3,
        rows_affected: 1,
    };
    assert_eq!(decode_resp(&result, DecodeContext::default()), want);
    assert_eq!(enc_resp(&want), result);
}

#[test]
fn single_batch_rows() {
    let rows = hex("05 00 00 00 07 00 00 00
         01 00 00 00 00 00 00 00
         69 00 00 00 00 00 00 00
         01 00 00 00 00 00 00 00
         07 00 00 00 00 00 00 00
         ff ff ff ff ff ff ff ff");
    let want = Response::Rows(Rows {
        columns: vec!["i".into()],
        rows: vec![vec![Value::Integer(7)]],
        more: false,
    });
    assert_eq!(decode_resp(&rows, DecodeContext::default()), want);
    assert_eq!(enc_resp(&want), rows);
}

#[test]
fn zero_column_rows_is_count_and_marker() {
    let want = Response::Rows(Rows {
        columns: vec![],
        rows: vec![],
        more: false,
    });
    let bytes = enc_resp(&want);
    assert_eq!(
        bytes,
        hex("02 00 00 00 07 00 00 00 00 00 00 00 00 00 00 00 ff ff ff ff ff ff ff ff")
    );
    assert_eq!(decode_resp(&bytes, DecodeContext::default()), want);
}

#[test]
fn failure_not_leader() {
    let mut resp = hex("03 00 00 00 00 00 00 00 | 0a 28 00 00 00 00 00 00");
    resp.extend_from_slice(b"not leader\0\0\0\0\0\0");
    let want = Response::failure(error::SQLITE_IOERR_NOT_LEADER, "not leader");
    assert_eq!(decode_resp(&resp, DecodeContext::default()), want);
    assert_eq!(enc_resp(&want), resp);
}

#[test]
fn servers_format_one() {
    let mut body = hex("01 00 00 00 00 00 00 00 | be 55 31 8c 85 71 c1 2d");
    body.extend_from_slice(b"127.0.0.1:19001\0");
    body.extend_from_slice(&[0; 8]);
    let mut resp = Header {
        words: (body.len() / 8) as u32,
        kind: 3,
        schema: 0,
    }
    .encode()
    .to_vec();
    resp.extend_from_slice(&body);
    let want = Response::Servers {
        format: 1,
        nodes: vec![NodeInfo {
            id: 0x2dc1_7185_8c31_55be,
            address: "127.0.0.1:19001".into(),
            role: Role::Voter,
            ..Default::default()
        }],
    };
    assert_eq!(decode_resp(&resp, DecodeContext::default()), want);
    assert_eq!(enc_resp(&want), resp);
}

#[test]
fn prepare_with_tail_uses_schema_one() {
    let req = Request::Prepare {
        db: 0,
        sql: "SELECT 1; SELECT 2".into(),
        with_tail: true,
    };
    let bytes = enc_req(&req);
    assert_eq!(bytes[5], 1);
    assert_eq!(decode_req(&bytes), req);
    let resp = Response::Stmt {
        db: 0,
        id: 0,
        params: 0,
        tail: Some(9),
    };
    let bytes = enc_resp(&resp);
    assert_eq!(bytes[5], 1);
    assert_eq!(decode_resp(&bytes, DecodeContext::default()), resp);
}

#[test]
fn thousand_params_use_schema_one() {
    let params: Vec<Value> = (0..1000).map(Value::Integer).collect();
    let req = Request::QuerySql {
        db: 0,
        sql: "SELECT ?".into(),
        params,
    };
    let bytes = enc_req(&req);
    assert_eq!(bytes[5], 1, "schema byte");
    // u32 count 1000 right after the SQL text.
    assert_eq!(&bytes[8 + 8 + 16..8 + 8 + 16 + 4], &1000u32.to_le_bytes());
    assert_eq!(decode_req(&bytes), req);
}

#[test]
fn schema_checks_follow_current_dqlite() {
    let h = |kind, schema| Header {
        words: 1,
        kind,
        schema,
    };
    let e = Request::decode(&h(0, 1), &[0; 8]).unwrap_err();
    assert_eq!(e.failure_code(), error::DQLITE_PARSE);
    let e = Request::decode(&h(9, 2), &[0; 16]).unwrap_err();
    assert_eq!(e.failure_code(), error::SQLITE_ERROR);
    let e = Request::decode(&h(2, 0), &[0; 8]);
    assert_eq!(e, Ok(Request::Heartbeat { timestamp: 0 }));
    let e = Request::decode(&h(20, 0), &[0; 8]).unwrap_err();
    assert_eq!(e, DecodeError::UnknownRequest(20));
    assert_eq!(e.failure_code(), error::DQLITE_PARSE);
    let e = Request::decode(&h(0, 0), &[]).unwrap_err();
    assert_eq!(e, DecodeError::EmptyBody(0));
}

#[test]
fn assign_without_role_is_promote() {
    let req = hex("01 00 00 00 0d 00 00 00 | 05 00 00 00 00 00 00 00");
    assert_eq!(decode_req(&req), Request::Assign { id: 5, role: None });
}

#[test]
fn dump_files_are_raw_bytes() {
    let want = Response::Files(vec![
        File {
            name: "probe.db".into(),
            data: b"SQLite format 3\0".to_vec(),
        },
        File {
            name: "probe.db-wal".into(),
            data: vec![],
        },
    ]);
    let bytes = enc_resp(&want);
    assert_eq!(&bytes[8..10], &[2, 0]);
    assert_eq!(&bytes[16..32], b"probe.db\0\0\0\0\0\0\0\0");
    assert_eq!(&bytes[32..40], &16u64.to_le_bytes());
    assert_eq!(decode_resp(&bytes, DecodeContext::default()), want);
}
