//! Real HTML through the rewriter: every trackable link mapped in order,
//! the pixel and the honeypot once before `</body>`, the unsubscribe tag
//! replaced, and every other byte unchanged. Also the `rewrite` command.

mod support;

use regex::Regex;
use support::*;
use waymark::destination::Destination;
use waymark::rewrite::{self, Href, Message, Switches, UNSUBSCRIBE_TAG};
use waymark::token::{self, Target};

const BASE: &str = "https://t.sender.example";

fn message(switches: Switches) -> Message {
    Message {
        base_url: Destination::parse(BASE).unwrap(),
        tenant: String::new(),
        message_id: "em_rewrite".into(),
        recipient: Some("reader@example.com".into()),
        sent_at: 1_790_000_000,
        tags: vec!["digest".into()],
        meta: vec![],
        switches,
        tracking_hosts: vec![],
        unsubscribe_mailto: Some("unsub@sender.example".into()),
        expires_at: None,
    }
}

/// What the rewriter should have done, derived from the input on its own:
/// the destinations of trackable links in order, and the input with each
/// of those hrefs and each merge tag replaced by a marker.
fn expected(input: &str) -> (Vec<String>, String) {
    let anchor = Regex::new(r#"(?is)(<a\b[^>]*?\bhref\s*=\s*)("[^"]*"|'[^']*'|[^\s>"']+)"#).unwrap();
    let comment = Regex::new(r"(?s)<!--.*?-->").unwrap();
    let mut links = Vec::new();
    let mut out = String::new();
    let mut rest = 0;
    let mut regions: Vec<(usize, usize, bool)> = Vec::new();
    for c in comment.find_iter(input) {
        regions.push((rest, c.start(), false));
        regions.push((c.start(), c.end(), true));
        rest = c.end();
    }
    regions.push((rest, input.len(), false));
    for (start, end, is_comment) in regions {
        let text = &input[start..end];
        if is_comment {
            out.push_str(text);
            continue;
        }
        let mut last = 0;
        for m in anchor.captures_iter(text) {
            let value = m.get(2).unwrap();
            let raw = value.as_str().trim_matches(|c| c == '"' || c == '\'');
            let tag_end = text[m.get(0).unwrap().start()..]
                .find('>')
                .map_or(text.len(), |i| m.get(0).unwrap().start() + i);
            let opted_out = text[m.get(0).unwrap().start()..tag_end].contains("data-waymark=\"off\"");
            out.push_str(&text[last..value.start()].replace(UNSUBSCRIBE_TAG, "«u»"));
            match rewrite::href(raw) {
                Href::Track(dest) if !opted_out && !dest.as_str().starts_with(BASE) => {
                    links.push(dest.to_string());
                    out.push_str("\"«c»\"");
                }
                _ => out.push_str(&value.as_str().replace(UNSUBSCRIBE_TAG, "«u»")),
            }
            last = value.end();
        }
        out.push_str(&text[last..].replace(UNSUBSCRIBE_TAG, "«u»"));
    }
    (links, out)
}

/// The output with our URLs replaced by the same markers and the tail
/// (honeypot and pixel) cut out; checks every token on the way.
fn observed(output: &str, input: &str, ring: &waymark::keys::KeyRing) -> (Vec<String>, String, usize) {
    let tail = Regex::new(&format!(
        r#"<a href="{BASE}/c/[A-Za-z0-9_-]+" style="display:none[^"]*" aria-hidden="true" tabindex="-1"></a><img src="{BASE}/o/[A-Za-z0-9_-]+\.gif" width="1" height="1" alt="" style="[^"]*">"#
    ))
    .unwrap();
    let tails: Vec<_> = tail.find_iter(output).collect();
    assert_eq!(tails.len(), 1, "exactly one honeypot-and-pixel tail");
    let trap_token =
        Regex::new(r#"/c/([A-Za-z0-9_-]+)""#).unwrap().captures(tails[0].as_str()).unwrap()[1].to_owned();
    match token::open(ring, &trap_token, 0).unwrap().into_claims().target {
        Target::Click(link) => assert!(link.trap, "the hidden link is the honeypot"),
        other => panic!("{other:?}"),
    }
    let tail_at = tails[0].start();
    let without_tail = format!("{}{}", &output[..tail_at], &output[tails[0].end()..]);
    let after_tail = &output[tails[0].end()..];
    let click = Regex::new(&format!(r#""{BASE}/c/([A-Za-z0-9_-]+)""#)).unwrap();
    let unsub = Regex::new(&format!(r"{BASE}/u/([A-Za-z0-9_-]+)")).unwrap();
    let mut links = Vec::new();
    // Links already on the tracking domain were in the input and stay as they are.
    let ours = |c: &regex::Captures| !input.contains(&c[0]);
    for (i, c) in click.captures_iter(&without_tail).filter(ours).enumerate() {
        let claims = token::open(ring, &c[1], 0).unwrap().into_claims();
        assert_eq!(claims.message_id, "em_rewrite");
        match claims.target {
            Target::Click(link) => {
                assert_eq!(link.index as usize, i, "link index = position");
                assert!(!link.trap);
                links.push(link.url.to_string());
            }
            other => panic!("{other:?}"),
        }
    }
    for u in unsub.captures_iter(&without_tail) {
        assert_eq!(token::open(ring, &u[1], 0).unwrap().into_claims().target, Target::Unsubscribe);
    }
    let masked =
        click.replace_all(
            &without_tail,
            |c: &regex::Captures| {
                if ours(c) { "\"«c»\"".to_owned() } else { c[0].to_owned() }
            },
        );
    let masked = unsub.replace_all(&masked, "«u»").into_owned();
    let before_body_end = after_tail.trim_start().to_ascii_lowercase().starts_with("</body>");
    (links, masked, usize::from(before_body_end))
}

#[test]
fn real_emails_are_instrumented_and_otherwise_unchanged() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/emails");
    let keys = key_entry("k1");
    let ring = ring(&keys);
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 4);
    for path in files {
        let mut input = std::fs::read_to_string(&path).unwrap();
        if input.contains("PADDING_MARKER") {
            // Put a merge tag across the rewriter's 4096-byte write boundary.
            let pad = 4096 - input.find("PADDING_MARKER").unwrap() - 7;
            input = input.replace("PADDING_MARKER", &format!("{} {UNSUBSCRIBE_TAG}", "x".repeat(pad)));
        }
        let out = rewrite::instrument(&ring, &message(Switches::default()), input.as_bytes()).unwrap();
        let output = String::from_utf8(out.html).unwrap();
        let (want_links, want_text) = expected(&input);
        let (got_links, got_text, before_body) = observed(&output, &input, &ring);
        let name = path.file_name().unwrap().to_string_lossy();
        assert_eq!(got_links, want_links, "{name}: links mapped in order");
        assert_eq!(out.links, want_links.len());
        assert_eq!(got_text, want_text, "{name}: every other byte unchanged");
        assert_eq!(
            before_body,
            usize::from(input.contains("</body>")),
            "{name}: the tail goes right before </body>"
        );
        assert!(!output.contains(UNSUBSCRIBE_TAG), "{name}: merge tags replaced");
        let headers: Vec<(&str, &str)> = out.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(headers[0].0, "List-Unsubscribe");
        assert!(
            headers[0].1.starts_with(&format!("<{BASE}/u/"))
                && headers[0].1.ends_with(", <mailto:unsub@sender.example?subject=unsubscribe>")
        );
        assert_eq!(headers[1], ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"));
    }
}

#[test]
fn switches_turn_each_part_off() {
    let ring = ring(&key_entry("k1"));
    let html = b"<html><body><a href=\"https://example.com/\">x</a> |*UNSUBSCRIBE*|</body></html>";
    let none = rewrite::instrument(
        &ring,
        &message(Switches { opens: false, clicks: false, unsubscribe: false }),
        html,
    )
    .unwrap();
    assert_eq!(none.html, html, "nothing switched on: nothing changes");
    assert!(none.headers.is_empty());
    let opens_only = rewrite::instrument(
        &ring,
        &message(Switches { opens: true, clicks: false, unsubscribe: false }),
        html,
    )
    .unwrap();
    let text = String::from_utf8(opens_only.html).unwrap();
    assert!(text.contains("/o/") && !text.contains("/c/") && text.contains("href=\"https://example.com/\""));
}

#[test]
fn the_rewrite_command_writes_html_and_headers() {
    use std::io::Write as _;
    let keys = key_entry("k1");
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("headers.txt");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_waymark"))
        .args([
            "rewrite",
            "--base-url",
            BASE,
            "--message-id",
            "m-cli",
            "--recipient",
            "a@example.com",
            "--tag",
            "t1",
            "--headers",
        ])
        .arg(&headers)
        .env_clear()
        .env("WAYMARK_KEYS", &keys)
        .env("WAYMARK_DATA_DIR", dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"<body><a href=\"https://example.com/a\">a</a></body>").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let html = String::from_utf8(out.stdout).unwrap();
    assert!(html.contains(&format!("<a href=\"{BASE}/c/")), "{html}");
    let headers = std::fs::read_to_string(headers).unwrap();
    let lines: Vec<&str> = headers.lines().collect();
    assert!(lines[0].starts_with(&format!("List-Unsubscribe: <{BASE}/u/")), "{headers}");
    assert_eq!(lines[1], "List-Unsubscribe-Post: List-Unsubscribe=One-Click");

    let no_clicks = waymark(
        &[
            "rewrite",
            "--base-url",
            BASE,
            "--message-id",
            "m",
            "--no-clicks",
            "--no-opens",
            "--no-unsubscribe",
        ],
        &[("WAYMARK_KEYS", &keys)],
    );
    assert!(no_clicks.status.success());
}

/// Issue 18: a message with more links than a token's index can tell
/// apart is refused with a clear error, never given repeated indices; one
/// at the limit is instrumented, its last link with index 65,534.
#[test]
fn more_links_than_an_index_can_hold_are_refused() {
    let keys = key_entry("k1");
    let r = ring(&keys);
    let msg = message(Switches { opens: false, clicks: true, unsubscribe: false });
    let html = |n: usize| {
        let mut s = String::with_capacity(n * 40);
        for i in 0..n {
            s.push_str(&format!("<a href=\"https://example.com/{i}\">x</a>"));
        }
        s
    };
    let out = rewrite::instrument(&r, &msg, html(rewrite::MAX_LINKS).as_bytes()).unwrap();
    assert_eq!(out.links, 65_535);
    let text = String::from_utf8(out.html).unwrap();
    // The last two click URLs: the last real link, then the honeypot.
    let mut tail = text.rsplit("/c/").map(|t| t.split('"').next().unwrap());
    let (trap, last) = (tail.next().unwrap(), tail.next().unwrap());
    for (t, want) in [(last, (65_534, false)), (trap, (rewrite::TRAP_INDEX, true))] {
        match token::open(&r, t, 0).unwrap().claims().target.clone() {
            Target::Click(link) => assert_eq!((link.index, link.trap), want),
            other => panic!("{other:?}"),
        }
    }
    let err = rewrite::instrument(&r, &msg, html(rewrite::MAX_LINKS + 1).as_bytes()).unwrap_err();
    assert!(err.to_string().contains("more than 65535 links"), "{err}");
}
