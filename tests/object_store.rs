//! Audit files in object storage, against a real S3-compatible server
//! (moto on loopback, installed by `.ci/run`): the proxy shipping sealed
//! files through a store outage, two proxies sharing a prefix, Object Lock
//! retention the store enforces, and verify/export/replay reading the
//! bucket as they read the local directory (and pyarrow, or DuckDB's
//! httpfs when it can be loaded, reading the shipped files).

mod common;

use common::s3::{Gate, Moto, aws_env};
use common::{flightrec, line_channel, test_server, write_file};
use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

const POLICY: &str = r#"version: "1"
default: allow
tools:
  delete_image_set:
    rules:
      - name: never delete
        action: deny
        on_deny: "deleting is not allowed"
"#;

/// `flightrec ARGS…` with the store's environment.
fn run_with(endpoint: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(flightrec());
    cmd.args(args).stdin(Stdio::null());
    aws_env(&mut cmd, endpoint);
    common::output_within(&mut cmd, Duration::from_secs(300))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn status_json(audit: &Path) -> Value {
    let out = common::run(&["audit", "status", audit.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A stdio proxy in front of the Rust test server, shipping to a store.
struct Proxy {
    child: Child,
    lines: Receiver<String>,
    errs: Receiver<String>,
    next_id: u64,
    seen_err: String,
}

impl Proxy {
    fn start(policy: &Path, audit: &Path, endpoint: &str, extra: &[&str]) -> Proxy {
        let mut cmd = Command::new(flightrec());
        cmd.args(["proxy", "--policy", policy.to_str().unwrap()])
            .args(["--audit-dir", audit.to_str().unwrap()])
            .args(extra)
            .arg("--")
            .arg(test_server())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        aws_env(&mut cmd, endpoint);
        let mut child = cmd.spawn().unwrap();
        let lines = line_channel(child.stdout.take().unwrap());
        let errs = line_channel(child.stderr.take().unwrap());
        let mut p = Proxy {
            child,
            lines,
            errs,
            next_id: 1,
            seen_err: String::new(),
        };
        p.request(
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "store-test", "version": "1"}}),
        );
        p.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        p
    }

    fn send(&mut self, v: Value) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{v}").unwrap();
        stdin.flush().unwrap();
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(20))
                .expect("the proxy answers");
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["id"] == json!(id) {
                return v;
            }
        }
    }

    /// One allowed call; asserts it was answered by the server.
    fn call(&mut self, i: usize) {
        let v = self.request(
            "tools/call",
            json!({"name": "copy_image_set", "arguments": {"n": i}}),
        );
        assert!(v.get("result").is_some(), "call {i}: {v}");
    }

    /// Waits for a stderr line containing `text`.
    fn stderr_until(&mut self, text: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if self.seen_err.contains(text) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.errs.recv_timeout(left) {
                Ok(l) => {
                    self.seen_err.push_str(&l);
                    self.seen_err.push('\n');
                }
                Err(_) => panic!("no stderr line with {text:?}; saw:\n{}", self.seen_err),
            }
        }
    }

    /// Closes the client side and waits for the proxy to exit.
    fn stop(mut self) -> String {
        drop(self.child.stdin.take());
        let status = common::wait_within(&mut self.child, Duration::from_secs(60));
        while let Ok(l) = self.errs.recv_timeout(Duration::from_secs(2)) {
            self.seen_err.push_str(&l);
            self.seen_err.push('\n');
        }
        assert!(
            status.success(),
            "proxy exit {status}; stderr:\n{}",
            self.seen_err
        );
        self.seen_err
    }
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `audit verify URL` output: (rows, chains line).
fn verified(endpoint: &str, target: &str) -> String {
    let out = run_with(endpoint, &["audit", "verify", target]);
    assert!(
        out.status.success(),
        "verify {target}: {}{}",
        stdout(&out),
        common::stderr(&out)
    );
    stdout(&out)
}

fn rows_in(verify_out: &str) -> u64 {
    let after = verify_out.split(" — ").nth(1).expect("a verify summary");
    after.split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn a_proxy_ships_every_sealed_file_through_a_store_outage() {
    let moto = Moto::start();
    moto.bucket("audit-outage", false);
    let gate = Gate::new(moto.port);
    let tmp = tempfile::tempdir().unwrap();
    let policy = write_file(tmp.path(), "p.yaml", POLICY);
    let audit = tmp.path().join("audit");
    let url = "s3://audit-outage/fleet/proxies";
    let mut proxy = Proxy::start(
        &policy,
        &audit,
        &gate.endpoint(),
        &["--ship", url, "--rotate-every", "1s"],
    );
    for i in 0..5 {
        proxy.call(i);
    }
    let keys = || {
        moto.tool(&["keys", "audit-outage", "fleet/proxies/"])
            .lines()
            .count()
    };
    wait_until(
        "the first file in the bucket",
        Duration::from_secs(30),
        || keys() >= 1,
    );

    // The store goes dark: calls go on, sealed files wait locally.
    gate.close();
    for i in 5..10 {
        proxy.call(i);
    }
    proxy.stderr_until("shipping audit files failed", Duration::from_secs(30));
    for i in 10..15 {
        proxy.call(i);
    }
    wait_until("a file waiting", Duration::from_secs(30), || {
        status_json(&audit)["waiting"]
            .as_array()
            .is_some_and(|w| !w.is_empty())
    });
    let during = status_json(&audit);
    assert!(
        during["last_attempt"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("audit-outage")),
        "the status names the bucket: {during}"
    );

    // Back: what waited ships, in order, without a restart.
    gate.reopen();
    proxy.stderr_until("shipping resumed", Duration::from_secs(90));
    for i in 15..18 {
        proxy.call(i);
    }
    // The last file is sealed and shipped as the proxy stops.
    let stderr = proxy.stop();
    assert!(!stderr.contains("not shipped"), "{stderr}");
    let status = status_json(&audit);
    assert_eq!(status["waiting"], json!([]), "{status}");
    assert_eq!(status["sealed"], status["shipped"], "{status}");

    // Every row is in the bucket, and its chain verifies there.
    let local = verified(&gate.endpoint(), audit.to_str().unwrap());
    let remote = verified(&gate.endpoint(), url);
    let calls = 18 + 1; // tools/call rows and the initialize
    assert!(rows_in(&local) >= calls, "{local}");
    assert_eq!(rows_in(&remote), rows_in(&local), "{remote} vs {local}");
    let hash = |s: &str| {
        s.split("last hash ")
            .nth(1)
            .map(str::trim)
            .map(String::from)
    };
    assert_eq!(hash(&remote), hash(&local));
}

#[test]
fn a_hanging_store_neither_slows_calls_nor_holds_the_proxy_past_its_ship_timeout() {
    let endpoint = common::s3::black_hole();
    let tmp = tempfile::tempdir().unwrap();
    let policy = write_file(tmp.path(), "p.yaml", POLICY);
    let audit = tmp.path().join("audit");
    let mut proxy = Proxy::start(
        &policy,
        &audit,
        &endpoint,
        &[
            "--ship",
            "s3://hangs/x",
            "--rotate-every",
            "1s",
            "--ship-timeout",
            "2s",
        ],
    );
    for i in 0..5 {
        proxy.call(i);
    }
    wait_until("a sealed file", Duration::from_secs(20), || {
        status_json(&audit)["sealed"].as_u64() >= Some(1)
    });
    for i in 5..10 {
        proxy.call(i);
    }
    // One upload hangs for the client's 120 s request timeout; the stop
    // must not wait for it (`Proxy::stop` allows 60 s).
    let stderr = proxy.stop();
    assert!(stderr.contains("not shipped to s3://hangs/x"), "{stderr}");
    let status = status_json(&audit);
    assert_eq!(status["shipped"], json!(0), "{status}");
    assert!(
        !status["waiting"].as_array().unwrap().is_empty(),
        "{status}"
    );
    // Nothing was lost: every call is in the local log.
    let out = verified(&endpoint, audit.to_str().unwrap());
    assert!(rows_in(&out) >= 11, "{out}");
}

#[test]
fn two_proxies_ship_to_one_prefix_without_overwriting_each_other() {
    let moto = Moto::start();
    moto.bucket("audit-shared", false);
    let tmp = tempfile::tempdir().unwrap();
    let policy = write_file(tmp.path(), "p.yaml", POLICY);
    let url = "s3://audit-shared/all";
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let extra = ["--ship", url, "--rotate-every", "1s"];
    let mut pa = Proxy::start(&policy, &a, &moto.endpoint(), &extra);
    let mut pb = Proxy::start(&policy, &b, &moto.endpoint(), &extra);
    for i in 0..6 {
        pa.call(i);
        pb.call(i);
        std::thread::sleep(Duration::from_millis(300));
    }
    pa.stop();
    pb.stop();
    let files = |d: &Path| status_json(d)["sealed"].as_u64().unwrap();
    let keys: Vec<String> = moto
        .tool(&["keys", "audit-shared", "all/"])
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(keys.len() as u64, files(&a) + files(&b), "{keys:?}");
    let remote = verified(&moto.endpoint(), url);
    assert!(remote.contains("2 chains intact"), "{remote}");
    let local = rows_in(&verified(&moto.endpoint(), a.to_str().unwrap()))
        + rows_in(&verified(&moto.endpoint(), b.to_str().unwrap()));
    assert_eq!(rows_in(&remote), local, "{remote}");
    // Another engine reads the shipped layout as it is.
    let python = common::need(common::root().join(".venv/bin/python"));
    let out = common::output_within(
        Command::new(python)
            .arg(common::root().join("tests/e2e/s3_tool.py"))
            .args([&moto.endpoint(), "query", "audit-shared", "all"]),
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    let q: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(q["rows"], json!(local), "{q}");
    assert_eq!(q["events"], json!(local), "{q}");
    assert_eq!(q["files"], json!(keys.len()), "{q}");
}

#[test]
fn shipped_files_carry_a_compliance_lock_the_store_enforces() {
    let moto = Moto::start();
    moto.bucket("audit-locked", true);
    moto.bucket("audit-unlocked", false);
    let tmp = tempfile::tempdir().unwrap();
    let audit = tmp.path().join("audit");
    common::copy_dir(
        &common::root().join("recordings/live-healthimaging"),
        &audit,
    );
    let ep = moto.endpoint();
    let d = audit.to_str().unwrap();

    // A bucket without Object Lock refuses a locked upload: the files wait,
    // and the error names the key and what the store said.
    let ship_locked = || {
        run_with(
            &ep,
            &[
                "audit",
                "ship",
                d,
                "s3://audit-locked/fleet",
                "--retain",
                "1d",
                "--lock",
                "compliance",
            ],
        )
    };
    let out = run_with(
        &ep,
        &[
            "audit",
            "ship",
            d,
            "s3://audit-unlocked/x",
            "--retain",
            "1d",
            "--lock",
            "compliance",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", common::stderr(&out));
    let err = common::stderr(&out);
    assert!(
        err.contains("s3://audit-unlocked/x/date=2026-11-25/"),
        "{err}"
    );
    assert!(err.contains("the store said 400"), "{err}");
    assert_eq!(status_json(&audit)["waiting"].as_array().unwrap().len(), 2);

    let out = ship_locked();
    assert!(out.status.success(), "{}", common::stderr(&out));
    let status = status_json(&audit);
    assert_eq!(status["waiting"], json!([]), "{status}");
    assert_eq!(status["locked"], json!(2), "{status}");
    let keys: Vec<String> = moto
        .tool(&["keys", "audit-locked", "fleet/"])
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    for key in &keys {
        let head: Value = serde_json::from_str(&moto.tool(&["head", "audit-locked", key])).unwrap();
        assert_eq!(head["lock_mode"], "COMPLIANCE", "{head}");
        let until =
            chrono::DateTime::parse_from_rfc3339(head["retain_until"].as_str().unwrap()).unwrap();
        let ahead = until.signed_duration_since(chrono::Utc::now());
        assert!(
            ahead > chrono::Duration::hours(23) && ahead <= chrono::Duration::hours(24),
            "{head}"
        );
        let deleted = moto.tool(&["delete-version", "audit-locked", key]);
        assert_eq!(deleted.trim(), "refused: AccessDenied", "{key}");
    }
    // Shipping again ships nothing and changes nothing.
    let out = ship_locked();
    assert!(out.status.success());
    assert!(
        common::stderr(&out).contains("0 file(s) shipped"),
        "{}",
        common::stderr(&out)
    );
    verified(&ep, "s3://audit-locked/fleet");
}

#[test]
fn an_object_already_under_a_shipped_name_is_never_overwritten() {
    let moto = Moto::start();
    moto.bucket("audit-taken", false);
    let tmp = tempfile::tempdir().unwrap();
    let audit = tmp.path().join("audit");
    common::copy_dir(
        &common::root().join("recordings/live-healthimaging"),
        &audit,
    );
    let first = status_json(&audit)["waiting"][0]
        .as_str()
        .unwrap()
        .to_string();
    let key = format!("p/{first}");
    moto.tool(&["put", "audit-taken", &key, "somebody else's file"]);
    let out = run_with(
        &moto.endpoint(),
        &[
            "audit",
            "ship",
            audit.to_str().unwrap(),
            "s3://audit-taken/p",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = common::stderr(&out);
    assert!(
        err.contains(&format!("s3://audit-taken/{key}")) && err.contains("already exists"),
        "{err}"
    );
    assert_eq!(
        moto.tool(&["get", "audit-taken", &key]),
        "somebody else's file"
    );
    // Order is kept: the later file waits behind the refused one.
    assert_eq!(status_json(&audit)["waiting"].as_array().unwrap().len(), 2);
    assert_eq!(moto.tool(&["keys", "audit-taken", "p/"]).lines().count(), 1);
}

/// Three days of calls from two writers, in many small files.
fn multi_day_log(dir: &Path) -> u64 {
    use flightrec::audit::{AuditRow, Recorder, RecorderConfig};
    let day0 = 1_795_000_000_000_000i64; // 2026-11-18
    let tools = ["copy_image_set", "list_image_sets", "delete_image_set"];
    let mut n = 0;
    for writer in 0..2 {
        let mut rec = Recorder::open(
            dir,
            RecorderConfig {
                rotate_bytes: 6_000,
                ..RecorderConfig::default()
            },
        )
        .unwrap();
        for i in 0..600u64 {
            let ts = day0 + (i as i64) * 400_000_000 + writer * 7_000_000;
            rec.record(AuditRow {
                event_id: format!("w{writer}-{i}"),
                ts_us: ts,
                session_id: format!("s{}", i % 7),
                agent_id: format!("agent-{}", i % 3),
                server: "imaging".into(),
                tool: Some(tools[(i % 3) as usize].to_string()),
                args_json: Some(format!("{{\"n\":{i}}}")),
                ..AuditRow::default()
            })
            .unwrap();
            n += 1;
        }
        rec.close().unwrap();
        // The second writer opens while the first is closed: same chain;
        // hold the first to get a second writer.
        if writer == 0 {
            std::mem::forget(Recorder::open(dir, RecorderConfig::default()).unwrap());
        }
    }
    n
}

#[test]
fn verify_export_and_replay_read_the_bucket_as_they_read_the_directory() {
    let moto = Moto::start();
    moto.bucket("audit-read", false);
    let ep = moto.endpoint();
    let tmp = tempfile::tempdir().unwrap();
    let audit = tmp.path().join("audit");
    let rows = multi_day_log(&audit);
    let d = audit.to_str().unwrap();
    let url = "s3://audit-read/team/a";
    let out = run_with(&ep, &["audit", "ship", d, url]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let files = status_json(&audit)["shipped"].as_u64().unwrap();
    assert!(files > 6, "many small files: {files}");

    // verify: the same rows, chains and hashes.
    let local = verified(&ep, d);
    let remote = verified(&ep, url);
    assert_eq!(rows_in(&local), rows);
    assert_eq!(local.replace(d, "X"), remote.replace(url, "X"));
    let file_url = format!("file://{d}");
    assert_eq!(
        verified(&ep, &file_url).replace(&file_url, "X"),
        local.replace(d, "X")
    );

    // export, filtered by time (partitions and row groups pruned) and not.
    for filter in [
        &[][..],
        &[
            "--from",
            "2026-11-19T12:00:00Z",
            "--to",
            "2026-11-20T06:00:00Z",
        ][..],
    ] {
        let local_out = tmp.path().join("local.jsonl");
        let mut args = vec![
            "export",
            d,
            "--format",
            "jsonl",
            "-o",
            local_out.to_str().unwrap(),
        ];
        args.extend_from_slice(filter);
        assert!(run_with(&ep, &args).status.success());
        let remote_out = tmp.path().join("remote.jsonl");
        let mut args = vec![
            "export",
            url,
            "--format",
            "jsonl",
            "-o",
            remote_out.to_str().unwrap(),
        ];
        args.extend_from_slice(filter);
        let out = run_with(&ep, &args);
        assert!(out.status.success(), "{}", common::stderr(&out));
        let (l, r) = (
            std::fs::read_to_string(&local_out).unwrap(),
            std::fs::read_to_string(&remote_out).unwrap(),
        );
        assert!(!l.is_empty());
        assert_eq!(l, r, "export {filter:?}");
    }
    // export into the bucket.
    let out = run_with(
        &ep,
        &[
            "export",
            d,
            "--format",
            "csv",
            "-o",
            "s3://audit-read/exports/all.csv",
        ],
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(
        moto.tool(&["keys", "audit-read", "exports/"]).trim(),
        "exports/all.csv"
    );

    // replay: the same report, whole and from a time on.
    let policy = write_file(
        tmp.path(),
        "limit.yaml",
        "version: \"1\"\ntools:\n  copy_image_set:\n    rules:\n      - name: few copies\n        rate_limit: 5/hour\n",
    );
    for filter in [&[][..], &["--from", "2026-11-20T00:00:00Z"][..]] {
        let replay = |input: &str| {
            let mut args = vec![
                "replay",
                input,
                "--policy",
                policy.to_str().unwrap(),
                "--format",
                "json",
                "-q",
            ];
            args.extend_from_slice(filter);
            let out = run_with(&ep, &args);
            assert!(out.status.success(), "{}", common::stderr(&out));
            stdout(&out).replace(input, "INPUT")
        };
        let (l, r) = (replay(d), replay(url));
        assert!(l.contains("\"events\""), "{l}");
        // The rule's first firing names its event: read back from the
        // bucket's object, after the scan, like from the local file.
        assert!(l.contains("\"event_id\": \"w"), "{l}");
        assert_eq!(l, r, "replay {filter:?}");
    }

    // An object replaced in the bucket breaks the chain there.
    let keys: Vec<String> = moto
        .tool(&["keys", "audit-read", "team/a/"])
        .lines()
        .map(String::from)
        .collect();
    let victim = &keys[keys.len() / 2];
    moto.tool(&["copy", "audit-read", &keys[0], victim]);
    let out = run_with(&ep, &["audit", "verify", url]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        common::stderr(&out).contains("s3://audit-read/"),
        "{}",
        common::stderr(&out)
    );

    // Errors name the bucket and what the store said.
    let out = run_with(&ep, &["audit", "verify", "s3://no-such-bucket/x"]);
    assert_eq!(out.status.code(), Some(2));
    let err = common::stderr(&out);
    assert!(
        err.contains("s3://no-such-bucket/x") && err.contains("NoSuchBucket"),
        "{err}"
    );
}

/// A bucket with a small shipped log; its URL.
fn small_shipped_log(moto: &Moto, bucket: &str, audit: &Path) -> String {
    use flightrec::audit::{AuditRow, Recorder, RecorderConfig};
    moto.bucket(bucket, false);
    let mut rec = Recorder::open(audit, RecorderConfig::default()).unwrap();
    for i in 0..5u64 {
        rec.record(AuditRow {
            event_id: format!("e{i}"),
            ts_us: 1_795_000_000_000_000 + i as i64,
            session_id: "s".into(),
            server: "imaging".into(),
            tool: Some("list_image_sets".into()),
            ..AuditRow::default()
        })
        .unwrap();
    }
    rec.close().unwrap();
    let url = format!("s3://{bucket}/team");
    let out = run_with(
        &moto.endpoint(),
        &["audit", "ship", audit.to_str().unwrap(), &url],
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    url
}

/// `flightrec ARGS…` with test credentials and no endpoint but `env`'s.
fn run_with_env(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(flightrec());
    cmd.args(args)
        .stdin(Stdio::null())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent");
    for k in [
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ENDPOINT",
        "AWS_ALLOW_HTTP",
    ] {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    common::output_within(&mut cmd, Duration::from_secs(300))
}

#[test]
fn a_plain_http_endpoint_off_loopback_is_refused_wherever_it_is_given() {
    let moto = Moto::start();
    let tmp = tempfile::tempdir().unwrap();
    let url = small_shipped_log(&moto, "audit-endpoints", &tmp.path().join("audit"));
    // The legitimate loopback endpoint reads the bucket.
    let good = moto.endpoint();
    let out = run_with_env(&[("AWS_ENDPOINT_URL", &good)], &["audit", "verify", &url]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(stdout(&out).contains("5 rows"), "{}", stdout(&out));

    // The host a client reaches here is evil.example, whatever the `@`
    // after the `?` suggests.
    let hostile = format!("http://evil.example?@127.0.0.1:{}", moto.port);
    let config = write_file(
        tmp.path(),
        "config",
        &format!("[default]\nendpoint_url = {hostile}\n"),
    );
    let config = config.to_str().unwrap();
    // Each place an endpoint comes from: the flag (""), or a variable.
    for (var, value) in [
        ("", hostile.as_str()),
        ("AWS_ENDPOINT_URL", &hostile),
        ("AWS_ENDPOINT_URL_S3", &hostile),
        ("AWS_ENDPOINT", &hostile),
        ("AWS_CONFIG_FILE", config),
    ] {
        let mut args = vec!["audit", "verify", &url];
        let mut env = vec![];
        if var.is_empty() {
            args.extend(["--endpoint", value]);
        } else {
            env.push((var, value));
        }
        let out = run_with_env(&env, &args);
        let err = common::stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{var}: {err}");
        assert!(
            err.contains(&hostile)
                && err.contains("loopback")
                && err.contains("evil.example (use https://)"),
            "{var}: {err}"
        );
    }
}

#[test]
fn the_endpoint_checked_is_the_endpoint_used() {
    let moto = Moto::start();
    let tmp = tempfile::tempdir().unwrap();
    let url = small_shipped_log(&moto, "audit-one-endpoint", &tmp.path().join("audit"));
    // Nothing listens on the other endpoint: a client that went there
    // instead of to the one given with --endpoint could not verify.
    let elsewhere = format!("http://127.0.0.1:{}", common::s3::free_port());
    for var in ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"] {
        let out = run_with_env(
            &[(var, &elsewhere)],
            &["audit", "verify", &url, "--endpoint", &moto.endpoint()],
        );
        assert!(
            out.status.success(),
            "{var}={elsewhere} won over --endpoint: {}",
            common::stderr(&out)
        );
        assert!(stdout(&out).contains("5 rows"), "{}", stdout(&out));
    }
}
