//! The command line: keygen, sign, and its refusals.

mod support;

use support::*;
use waymark::token;

#[test]
fn keygen_prints_a_key_the_ring_accepts() {
    let out = waymark(&["keygen", "--kid", "k7"], &[]);
    assert!(out.status.success());
    let entry = String::from_utf8(out.stdout).unwrap();
    let ring = ring(entry.trim());
    assert_eq!(ring.sealing().id().as_str(), "k7");

    let out = waymark(&["keygen", "--kid", "far-too-long"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("key id \"far-too-long\" is invalid"));
}

#[test]
fn sign_mints_urls_that_open_with_the_same_ring() {
    let keys = key_entry("k1");
    let dir = tempfile::tempdir().unwrap();
    let env = [("WAYMARK_KEYS", keys.as_str()), ("WAYMARK_DATA_DIR", dir.path().to_str().unwrap())];
    let out = waymark(
        &[
            "sign",
            "click",
            "--base-url",
            "https://t.example.com/",
            "--message-id",
            "m1",
            "--recipient",
            "a@example.com",
            "--url",
            "https://example.com/x?y=1",
            "--link-index",
            "2",
            "--sent-at",
            "2026-11-24T09:30:00Z",
            "--tag",
            "t1",
            "--tag",
            "t2",
            "--meta",
            "campaign=spring",
        ],
        &env,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let url = String::from_utf8(out.stdout).unwrap();
    let text = url.trim().strip_prefix("https://t.example.com/c/").expect("click URL under the base");
    let claims = token::open(&ring(&keys), text, 0).unwrap().into_claims();
    assert_eq!(claims.message_id, "m1");
    assert_eq!(claims.sent_at, 1_795_512_600);
    assert_eq!(claims.tags, ["t1", "t2"]);
    assert_eq!(claims.meta, [("campaign".to_owned(), "spring".to_owned())]);
    match claims.target {
        token::Target::Click(link) => {
            assert_eq!(link.index, 2);
            assert_eq!(link.url.as_str(), "https://example.com/x?y=1");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn sign_refuses_bad_input_with_a_clear_message() {
    let keys = key_entry("k1");
    let dir = tempfile::tempdir().unwrap();
    let env = [("WAYMARK_KEYS", keys.as_str()), ("WAYMARK_DATA_DIR", dir.path().to_str().unwrap())];
    let base = ["--base-url", "https://t.example.com", "--message-id", "m1"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["click", "--url", "javascript:alert(1)"], "has scheme \"javascript\": expected http or https"),
        (
            vec!["click", "--url", "https://example.com/\r\nLocation: https://evil.example"],
            "control character",
        ),
        (vec!["click", "--url", "//evil.example/"], "is not a URL"),
        (vec!["click", "--url", "https://bank.example@evil.example/"], "user name or password"),
        (vec!["click"], "a click link needs --url"),
        (vec!["open", "--url", "https://example.com/"], "--url is for click links only"),
        (vec!["open", "--sent-at", "yesterday"], "--sent-at \"yesterday\" is not an RFC 3339 time"),
        (vec!["open", "--meta", "novalue"], "--meta \"novalue\" is not of the form KEY=VALUE"),
    ];
    for (args, want) in cases {
        let mut all = vec!["sign"];
        all.extend(&args);
        all.extend(base);
        let out = waymark(&all, &env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(out.stdout.is_empty());
    }
    let out = waymark(&["sign", "open", "--base-url", "ftp://x", "--message-id", "m"], &env);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--base-url \"ftp://x\""));
}

#[test]
fn serve_fails_at_start_naming_the_bad_setting() {
    let cases = [
        // Named as the user wrote it: the variable, not the file key.
        (("WAYMARK_LISTEN", "nowhere"), "setting WAYMARK_LISTEN = \"nowhere\" is invalid"),
        (("WAYMARK_KEYS", "k1:tooshort"), "setting WAYMARK_KEYS is invalid"),
        (("WAYMARK_FLUSH_INTERVAL_MS", "soon"), "WAYMARK_FLUSH_INTERVAL_MS = \"soon\""),
    ];
    for ((var, value), want) in cases {
        let out = waymark(&["serve"], &[(var, value), ("WAYMARK_KEYS_FILE", "/nonexistent")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(want), "{var}: {err}");
    }
}

#[test]
fn sign_count_mints_one_url_per_message() {
    let keys = key_entry("k1");
    let dir = tempfile::tempdir().unwrap();
    let env = [("WAYMARK_KEYS", keys.as_str()), ("WAYMARK_DATA_DIR", dir.path().to_str().unwrap())];
    let out = waymark(
        &["sign", "open", "--base-url", "http://t.example", "--message-id", "bulk", "--count", "5"],
        &env,
    );
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let ids: Vec<String> = text
        .lines()
        .map(|url| {
            let t = url.strip_prefix("http://t.example/o/").unwrap().strip_suffix(".gif").unwrap();
            token::open(&ring(&keys), t, 0).unwrap().into_claims().message_id
        })
        .collect();
    assert_eq!(ids, ["bulk-0", "bulk-1", "bulk-2", "bulk-3", "bulk-4"]);
}

#[test]
fn sign_for_a_tenant_uses_its_host_and_its_own_keys() {
    let global = key_entry("k1");
    let tenant_keys = key_entry("ka");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("waymark.toml");
    std::fs::write(
        &config,
        format!("[[tenants]]\nname = \"a\"\nhosts = [\"t.sender-a.example\"]\nkeys = [\"{tenant_keys}\"]\n"),
    )
    .unwrap();
    let env = [
        ("WAYMARK_KEYS", global.as_str()),
        ("WAYMARK_DATA_DIR", dir.path().to_str().unwrap()),
        ("WAYMARK_CONFIG", config.to_str().unwrap()),
    ];
    let out = waymark(&["sign", "open", "--message-id", "m", "--tenant", "a"], &env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let url = String::from_utf8(out.stdout).unwrap();
    let t = url.trim().strip_prefix("https://t.sender-a.example/o/").unwrap().strip_suffix(".gif").unwrap();
    assert_eq!(token::open(&ring(&tenant_keys), t, 0).unwrap().claims().tenant, "a");
    assert!(token::open(&ring(&global), t, 0).is_err());
    let out = waymark(&["sign", "open", "--message-id", "m", "--tenant", "nobody"], &env);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tenant \"nobody\" is not configured"));
}

/// What a new user meets first (issue 15): each cause said once, a loud
/// warning when minting with the development ring, and logs without colour
/// codes when they go to a file.
#[test]
fn first_contact_errors_warnings_and_logs_read_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let keys = key_entry("k1");
    let out = waymark(
        &["serve"],
        &[
            ("WAYMARK_EVENTS_FILE", "/proc/nope/events.jsonl"),
            ("WAYMARK_KEYS", &keys),
            ("WAYMARK_LISTEN", "127.0.0.1:0"),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
    let out = waymark(&["serve"], &[("WAYMARK_KEYS", "garbage"), ("WAYMARK_DATA_DIR", data)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("not of the form KID:SECRET").count(), 1, "{err}");

    let out = waymark(&["sign", "open", "--message-id", "m"], &[("WAYMARK_DATA_DIR", data)]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DEVELOPMENT KEY RING IN USE"));
    let out = waymark(&["sign", "open", "--message-id", "m"], &[("WAYMARK_KEYS", &keys)]);
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));

    let mut svc = Service::start_with_stderr("", &[("WAYMARK_LOG", "info")]);
    svc.stop();
    let log = svc.stderr();
    assert!(log.contains("DEVELOPMENT KEY RING IN USE") && log.contains("stopped"), "{log}");
    assert!(!log.contains('\u{1b}'), "colour codes in a log file: {log:?}");
}
