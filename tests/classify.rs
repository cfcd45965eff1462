//! Classification over the real binary: every rule of the classifier seen
//! in the events it writes, with clients told apart through a trusted
//! proxy's X-Forwarded-For.

mod support;

use serde_json::Value;
use support::*;
use waymark::destination::Destination;
use waymark::keys::KeyRing;
use waymark::token::{self, Claims, Link, Target};

const HUMAN_UA: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15";

struct Harness {
    svc: Service,
    ring: KeyRing,
}

impl Harness {
    fn start(env: &[(&str, &str)]) -> Harness {
        let keys = key_entry("k1");
        // Judged on three threads, sharded by message: every behaviour below
        // must hold as on one (issue 19).
        let mut all = vec![("WAYMARK_TRUSTED_PROXIES", "127.0.0.1/32"), ("WAYMARK_JUDGE_THREADS", "3")];
        all.extend_from_slice(env);
        Harness { svc: Service::start(&keys, &all), ring: ring(&keys) }
    }

    fn open(&self, claims: &Claims, client: &str, ua: &str) {
        let t = token::seal(&self.ring, claims).unwrap();
        let r = self.svc.get(&format!("/o/{t}"), &[("X-Forwarded-For", client), ("User-Agent", ua)]);
        assert_eq!(r.status, 200);
    }

    fn click(&self, claims: &Claims, client: &str, ua: &str) {
        let t = token::seal(&self.ring, claims).unwrap();
        let r = self.svc.get(&format!("/c/{t}"), &[("X-Forwarded-For", client), ("User-Agent", ua)]);
        assert_eq!(r.status, 302, "a click is always redirected, whatever its verdict");
    }

    /// Waits for `n` events, checks each against the schema.
    fn events(&self, n: usize) -> Vec<Value> {
        let events = self.svc.events(n);
        assert_eq!(events.len(), n, "{events:#?}");
        let schema = event_schema();
        for e in &events {
            assert_schema_valid(&schema, e);
        }
        events
    }
}

fn click(message_id: &str, index: u16) -> Claims {
    Claims {
        target: Target::Click(Link {
            index,
            url: Destination::parse(&format!("https://example.com/{index}")).unwrap(),
            trap: false,
        }),
        ..open_claims(message_id)
    }
}

/// The first event of a message. Judge threads keep each message's events
/// in order, but not the order between messages.
fn first_of<'a>(events: &'a [Value], message_id: &str) -> &'a Value {
    events
        .iter()
        .find(|e| obj(e)["email"]["id"] == message_id)
        .unwrap_or_else(|| panic!("no event of {message_id} in {events:#?}"))
}

fn obj(e: &Value) -> &Value {
    &e["data"]["object"]
}

fn reasons(e: &Value) -> Vec<&str> {
    obj(e)["reasons"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect()
}

#[test]
fn an_ordinary_open_and_click_count_as_human_with_a_device() {
    let h = Harness::start(&[]);
    h.open(&open_claims("m1"), "203.0.113.10", HUMAN_UA);
    h.click(&click("m1", 0), "203.0.113.10", HUMAN_UA);
    let events = h.events(2);
    for e in &events {
        assert_eq!(obj(e)["verdict"], "human");
        assert_eq!(obj(e)["counted"], true, "{e:#}");
        assert_eq!(obj(e)["ip_address"], "203.0.113.10", "X-Forwarded-For from a trusted proxy");
        assert_eq!(obj(e)["device"]["category"], "pc");
        assert_eq!(obj(e)["device"]["name"], "Safari");
        assert_eq!(obj(e)["agent_category"], "browser");
        let version = obj(e)["rules_version"].as_str().unwrap();
        assert!(version.starts_with("ua-") && version.contains("+cua-1.67.0+net-"), "{version}");
    }
}

#[test]
fn published_network_lists_are_read_from_their_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("lists.toml"),
        "[[list]]\nfile = \"acme.txt\"\nformat = \"plain\"\noperator = \"-\"\nverdict = \"bot\"\nwhat = \"a plain list\"\nsource = \"test\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("acme.txt"), "198.18.0.0/15 acme-gateway scanner\n").unwrap();
    let h = Harness::start(&[("WAYMARK_NETWORK_LISTS", dir.path().to_str().unwrap())]);
    h.click(&click("m-published", 0), "198.18.7.7", HUMAN_UA);
    let events = h.events(1);
    assert_eq!(obj(&events[0])["verdict"], "scanner");
    assert_eq!(reasons(&events[0]), ["net:acme-gateway"]);
    assert!(obj(&events[0])["rules_version"].as_str().unwrap().contains("+nl-"));

    // A changed list is read again without a restart.
    std::fs::write(
        dir.path().join("acme.txt"),
        "198.18.0.0/15 acme-gateway scanner\n100.64.0.0/10 acme-relay proxy\n",
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut n = 1;
    loop {
        h.open(&open_claims(&format!("m-published-{n}")), "100.64.1.1", HUMAN_UA);
        let events = h.svc.events(n + 1);
        let last =
            events.iter().find(|e| obj(e)["email"]["id"] == format!("m-published-{n}").as_str()).unwrap();
        if obj(last)["verdict"] == "proxy" {
            assert_eq!(reasons(last), ["net:acme-relay"]);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "network lists were not reloaded");
        std::thread::sleep(std::time::Duration::from_millis(300));
        n = events.len();
    }
}

#[test]
fn the_vendored_crawler_list_names_machines_our_rules_do_not() {
    let h = Harness::start(&[]);
    // (user agent, verdict, reason, agent_category): the first two only the
    // vendored list knows; the third our own rule knows first.
    let cases = [
        ("Blackbox Exporter/0.24.0", "bot", "ua:list-blackbox-exporter", "monitoring"),
        (
            "Mozilla/5.0 (compatible; NetcraftSurveyAgent/1.0; +info@netcraft.com)",
            "scanner",
            "ua:list-netcraftsurveyagent",
            "security-scanner",
        ),
        (
            "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
            "proxy",
            "ua:google-image-proxy",
            "image-proxy",
        ),
    ];
    for (i, (ua, ..)) in cases.iter().enumerate() {
        h.open(&open_claims(&format!("m-list-{i}")), "203.0.113.60", ua);
    }
    // Judge threads own messages by hash: events of different messages may
    // come in any order.
    let events = h.events(cases.len());
    for (ua, verdict, reason, category) in cases {
        let e = events.iter().find(|e| obj(e)["user_agent"] == ua).expect(ua);
        assert_eq!(
            (obj(e)["verdict"].as_str(), reasons(e).first().copied(), obj(e)["agent_category"].as_str()),
            (Some(verdict), Some(reason), Some(category)),
            "{ua}"
        );
    }
}

#[test]
fn apple_mail_privacy_protection_opens_are_machine_opens_and_never_count() {
    let h = Harness::start(&[]);
    // Apple MPP prefetches with the bare user agent, from wherever it is relayed.
    h.open(&open_claims("m-mpp"), "203.0.113.80", "Mozilla/5.0");
    let events = h.events(1);
    let o = obj(&events[0]);
    assert_eq!((o["verdict"].as_str(), o["counted"].as_bool()), (Some("proxy"), Some(false)), "{o:#}");
    assert!(reasons(&events[0]).contains(&"machine-open"), "{o:#}");
}

/// A proxy network only explains an open: people click through relays as
/// themselves. Apple's 17.0.0.0/8 is a proxy network of data/networks.toml.
#[test]
fn a_proxy_network_explains_an_open_but_not_a_click() {
    let h = Harness::start(&[]);
    h.open(&open_claims("m-relay"), "17.58.1.1", HUMAN_UA);
    h.click(&click("m-relay", 0), "17.58.1.1", HUMAN_UA);
    // The click counts, so it back-fills the open that did not.
    let events = h.events(3);
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["email.opened", "email.clicked", "email.opened"]);
    let (open, click) = (&events[0], &events[1]);
    assert_eq!(reasons(&events[2]), ["backfill"]);
    assert_eq!(
        (obj(open)["verdict"].as_str(), obj(open)["counted"].as_bool()),
        (Some("proxy"), Some(false)),
        "{open:#}"
    );
    assert!(reasons(open).contains(&"net:apple") && reasons(open).contains(&"machine-open"), "{open:#}");
    assert_eq!(
        (obj(click)["verdict"].as_str(), obj(click)["counted"].as_bool()),
        (Some("human"), Some(true)),
        "{click:#}"
    );
    assert!(!reasons(click).contains(&"machine-open"), "{click:#}");
}

#[test]
fn woothee_crawlers_no_rule_or_list_knows_are_bots() {
    let h = Harness::start(&[]);
    // Each checked with `waymark classify --ua`: neither our rules nor the
    // vendored list match them, only woothee's crawler table.
    let cases = [
        "Apple-PubSub/65.28",
        "livedoor FeedFetcher/0.01 (http://reader.livedoor.com/; 1 subscriber)",
        "mixi-check/1.0",
    ];
    for (i, ua) in cases.iter().enumerate() {
        h.open(&open_claims(&format!("m-woothee-{i}")), "203.0.113.81", ua);
    }
    let events = h.events(cases.len());
    for ua in cases {
        let e = events.iter().find(|e| obj(e)["user_agent"] == ua).expect(ua);
        assert_eq!(
            (obj(e)["verdict"].as_str(), reasons(e), obj(e)["counted"].as_bool()),
            (Some("bot"), vec!["ua:crawler"], Some(false)),
            "{ua}"
        );
    }
}

#[test]
fn a_hit_right_after_sending_is_a_prefetch() {
    let h = Harness::start(&[("WAYMARK_PREFETCH_WINDOW_MS", "30000")]);
    let fresh = Claims { sent_at: now(), ..open_claims("m-fresh") };
    h.open(&fresh, "203.0.113.11", HUMAN_UA);
    h.click(&Claims { sent_at: now(), ..click("m-fresh", 0) }, "203.0.113.11", HUMAN_UA);
    let events = h.events(2);
    assert_eq!(
        (obj(&events[0])["verdict"].as_str(), obj(&events[0])["counted"].as_bool()),
        (Some("proxy"), Some(false))
    );
    assert_eq!(
        (obj(&events[1])["verdict"].as_str(), obj(&events[1])["counted"].as_bool()),
        (Some("scanner"), Some(false))
    );
    assert!(reasons(&events[0]).contains(&"prefetch") && reasons(&events[1]).contains(&"prefetch"));
}

#[test]
fn repeats_are_logged_not_counted_and_share_a_dedup_key() {
    let h = Harness::start(&[]);
    h.open(&open_claims("m-rep"), "203.0.113.12", HUMAN_UA);
    h.open(&open_claims("m-rep"), "203.0.113.12", HUMAN_UA);
    let events = h.events(2);
    assert_eq!(obj(&events[0])["counted"], true);
    assert_eq!(obj(&events[1])["counted"], false);
    assert_eq!(reasons(&events[1]), ["repeat"]);
    assert_eq!(obj(&events[0])["dedup_key"], obj(&events[1])["dedup_key"]);
    assert_ne!(events[0]["event_id"], events[1]["event_id"]);
}

#[test]
fn a_first_click_back_fills_the_open_that_never_arrived() {
    let h = Harness::start(&[]);
    h.click(&click("m-bf", 2), "203.0.113.13", HUMAN_UA);
    let events = h.events(2);
    assert_eq!(events[0]["type"], "email.clicked");
    assert_eq!(events[1]["type"], "email.opened");
    assert_eq!(obj(&events[1])["counted"], true);
    assert_eq!(reasons(&events[1]), ["backfill"]);
    assert!(obj(&events[1]).get("link").is_none());
    // A second click on another link back-fills nothing more.
    h.click(&click("m-bf", 3), "203.0.113.13", HUMAN_UA);
    assert_eq!(h.events(3)[2]["type"], "email.clicked");
}

#[test]
fn head_requests_and_missing_user_agents_never_count() {
    let h = Harness::start(&[]);
    let t = token::seal(&h.ring, &open_claims("m-head")).unwrap();
    h.svc.send("HEAD", &format!("/o/{t}"), &[("User-Agent", HUMAN_UA)]);
    h.open(&open_claims("m-noua"), "203.0.113.14", "");
    let events = h.events(2);
    let (head, noua) = (first_of(&events, "m-head"), first_of(&events, "m-noua"));
    assert_eq!((obj(head)["counted"].as_bool(), reasons(head)), (Some(false), vec!["head"]));
    assert_eq!(obj(head)["verdict"], "bot");
    assert_eq!(reasons(noua), ["ua:missing"]);
    assert_eq!(obj(noua)["counted"], false);
}

#[test]
fn a_burst_of_clicks_is_a_scanner_and_withdraws_what_it_had_counted() {
    let h = Harness::start(&[]);
    let scanner = "203.0.113.66";
    h.click(&click("m-burst", 0), scanner, HUMAN_UA);
    h.click(&click("m-burst", 1), scanner, HUMAN_UA);
    h.click(&click("m-burst", 2), scanner, HUMAN_UA);
    // click 0, its back-filled open, click 1, click 2 (the burst), then one
    // reclassification for each of the three that had counted.
    let events = h.events(7);
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types[..4], ["email.clicked", "email.opened", "email.clicked", "email.clicked"]);
    assert_eq!(types[4..], ["email.reclassified"; 3]);
    let burst = &events[3];
    assert_eq!(
        (obj(burst)["verdict"].as_str(), obj(burst)["counted"].as_bool()),
        (Some("scanner"), Some(false))
    );
    assert!(reasons(burst).contains(&"burst"));
    let mut counted_before: Vec<&Value> =
        events[..3].iter().filter(|e| obj(e)["counted"] == true).map(|e| &e["event_id"]).collect();
    let mut withdrawn: Vec<&Value> = events[4..].iter().map(|e| &obj(e)["original_event_id"]).collect();
    counted_before.sort_by_key(|v| v.as_str().unwrap().to_owned());
    withdrawn.sort_by_key(|v| v.as_str().unwrap().to_owned());
    assert_eq!(counted_before, withdrawn, "every counted event of the scanner is withdrawn, once");
    for e in &events[4..] {
        assert_eq!((obj(e)["counted"].as_bool(), obj(e)["verdict"].as_str()), (Some(false), Some("scanner")));
        assert!(reasons(e).contains(&"burst"));
    }
    let more = events;
    // Its next hit on that message is a scanner hit too.
    h.open(&open_claims("m-burst"), scanner, HUMAN_UA);
    let last = h.svc.events(more.len() + 1).pop().unwrap();
    assert!(reasons(&last).contains(&"scanning"), "{last:#}");
    // Another client's click on the same message still counts.
    h.click(&click("m-burst", 0), "203.0.113.20", HUMAN_UA);
    let last = h.svc.events(more.len() + 2).pop().unwrap();
    assert_eq!(obj(&last)["counted"], true, "{last:#}");
}

#[test]
fn the_honeypot_link_marks_a_scanner() {
    let h = Harness::start(&[]);
    let trap = Claims {
        target: Target::Click(Link {
            index: 99,
            url: Destination::parse("https://example.com/").unwrap(),
            trap: true,
        }),
        ..open_claims("m-trap")
    };
    h.click(&trap, "203.0.113.77", HUMAN_UA);
    let events = h.events(1);
    assert_eq!(
        (obj(&events[0])["verdict"].as_str(), obj(&events[0])["counted"].as_bool()),
        (Some("scanner"), Some(false))
    );
    assert!(reasons(&events[0]).contains(&"honeypot"));
}

#[test]
fn forwarded_headers_from_untrusted_peers_are_ignored() {
    let keys = key_entry("k1");
    let svc = Service::start(&keys, &[]);
    let t = token::seal(&ring(&keys), &open_claims("m-xff")).unwrap();
    svc.get(&format!("/o/{t}"), &[("X-Forwarded-For", "17.58.1.1"), ("User-Agent", HUMAN_UA)]);
    let events = svc.events(1);
    assert_eq!(obj(&events[0])["ip_address"], "127.0.0.1");
}

#[test]
fn asn_and_city_databases_enrich_events_and_feed_the_verdict() {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
    let asn = format!("{data}/test-asn.mmdb");
    let city = format!("{data}/test-city.mmdb");
    let h = Harness::start(&[("WAYMARK_ASN_DB", &asn), ("WAYMARK_CITY_DB", &city)]);
    h.open(&open_claims("m-geo"), "203.0.113.30", HUMAN_UA);
    h.click(&click("m-asn", 0), "198.51.100.30", HUMAN_UA);
    let events = h.events(3);
    let (geo, asn) = (first_of(&events, "m-geo"), first_of(&events, "m-asn"));
    assert_eq!(obj(geo)["geo"], serde_json::json!({"country": "DE", "region": "BE", "city": "Berlin"}));
    assert!(obj(geo).get("network").is_none());
    assert_eq!(
        obj(asn)["network"],
        serde_json::json!({"number": 64496, "organization": "Example Documentation AS"})
    );
    assert!(obj(asn).get("geo").is_none());
}

#[test]
fn counting_policy_is_configurable() {
    let h = Harness::start(&[("WAYMARK_COUNT_OPENS", "human")]);
    // Gmail's image proxy fetches on the reader's behalf: a proxy open.
    let gmail = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)";
    h.open(&open_claims("m-pol"), "203.0.113.40", gmail);
    let events = h.events(1);
    assert_eq!(obj(&events[0])["verdict"], "proxy");
    assert_eq!(obj(&events[0])["counted"], false, "proxy opens were configured not to count");
}

#[test]
fn the_scanner_list_reloads_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("scanners.toml");
    let v1 = "version = \"live-1\"\n[[rule]]\nname = \"acme-gateway\"\nwhat = \"test gateway\"\nverdict = \"scanner\"\ncontains = \"AcmeGateway\"\nsource = \"test\"\n";
    std::fs::write(&rules, v1).unwrap();
    let h = Harness::start(&[("WAYMARK_SCANNER_RULES", rules.to_str().unwrap())]);
    let ua = "Mozilla/5.0 LinkCheck/2.0";
    h.click(&click("m-live-1", 0), "203.0.113.50", ua);
    let first = h.events(2);
    assert_eq!(obj(&first[0])["verdict"], "human");
    assert_eq!(obj(&first[0])["rules_version"].as_str().unwrap().split('+').next(), Some("ua-live-1"));

    let v2 = v1.replace("live-1", "live-2")
        + "[[rule]]\nname = \"linkcheck\"\nwhat = \"a link checker\"\nverdict = \"scanner\"\ncontains = \"LinkCheck/\"\nsource = \"test\"\n";
    std::fs::write(&rules, v2).unwrap();
    // The file is looked at once a second; allow a few.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut n = 2;
    loop {
        h.click(&click(&format!("m-live-{n}"), 0), "203.0.113.50", ua);
        let events = h.svc.events(n + 1);
        let last = events.iter().rev().find(|e| e["type"] == "email.clicked").unwrap();
        if obj(last)["verdict"] == "scanner" {
            assert_eq!(reasons(last), ["ua:linkcheck"]);
            assert!(obj(last)["rules_version"].as_str().unwrap().starts_with("ua-live-2+"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "rules were not reloaded");
        std::thread::sleep(std::time::Duration::from_millis(300));
        n = events.len();
    }
}

#[test]
fn the_classify_command_runs_the_server_classifier() {
    use std::io::Write as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_waymark"))
        .args(["classify", "--kind", "open"])
        .env_clear()
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let input =
        format!("{HUMAN_UA}\n203.0.113.9\tcurl/8.5.0\nGooglebot/2.1 (+http://www.google.com/bot.html)\n");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["verdict"], "human");
    assert_eq!(lines[0]["device"]["name"], "Safari");
    assert_eq!(lines[1]["ip"], "203.0.113.9");
    assert_eq!(lines[1]["verdict"], "bot");
    assert_eq!(lines[2]["verdict"], "bot");
    // The category an event would carry, as the events carry it.
    assert_eq!(lines[0]["agent_category"], "browser");
    assert_eq!(lines[1]["agent_category"], "http-library");
    assert_eq!(lines[2]["agent_category"], "search-engine");

    let one = waymark(&["classify", "--ua", "x", "--ip", "not-an-ip"], &[]);
    assert!(!one.status.success());
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_waymark"))
        .args(["classify"])
        .env_clear()
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut bad = bad;
    bad.stdin.take().unwrap().write_all(b"nonsense\tua\n").unwrap();
    let out = bad.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\"nonsense\" before the tab is not an IP address")
    );
}

/// scripts/refresh-networks against copies served on loopback: valid copies
/// replace the lists and are named in lists.toml, invalid, empty or missing
/// ones leave the old lists in place and fail the run.
#[test]
fn the_network_refresh_script_replaces_lists_only_with_valid_copies() {
    let out = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/refresh-networks"))
        .arg("--self-test")
        .output()
        .expect("python3 runs the refresh script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("self-test: 1 passed, 0 failed"), "{stdout}");
}
