//! Benches for the work on every hit: sealing and opening tokens,
//! classifying (user agent cached and not, network look-up), building and
//! encoding an event, and the judge turning a hit into its events; and
//! what start-up costs: compiling the rule and crawler lists. Run with
//! `cargo bench --bench hot_path`.

use std::hint::black_box;

use std::net::IpAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use waymark::classify::crawlers::CrawlerList;
use waymark::classify::networks::NetworkList;
use waymark::classify::rules::Rules;
use waymark::classify::{Classifier, Settings};
use waymark::destination::Destination;
use waymark::event::Event;
use waymark::hit::record::HitRecord;
use waymark::hit::{Hit, Method};
use waymark::keys::{Key, KeyId, KeyRing};
use waymark::token::{self, Claims, Kind, Link, Target};

fn claims() -> Claims {
    Claims {
        target: Target::Click(Link {
            index: 3,
            url: Destination::parse("https://shop.example.com/spring?utm_source=mail").unwrap(),
            trap: false,
        }),
        tenant: String::new(),
        message_id: "em_4yM2nTvR8oPcX3uZiKeLg7sB".into(),
        recipient: Some("recipient@example.com".into()),
        sent_at: 1_779_000_000,
        expires_at: None,
        tags: vec![],
        meta: vec![],
    }
}

fn tokens(c: &mut Criterion) {
    let ring = KeyRing::parse(&Key::generate_entry(&KeyId::new("k1").unwrap())).unwrap();
    let claims = claims();
    let text = token::seal(&ring, &claims).unwrap();
    c.bench_function("token/seal", |b| b.iter(|| token::seal(&ring, black_box(&claims)).unwrap()));
    c.bench_function("token/open", |b| b.iter(|| token::open(&ring, black_box(&text), 0).unwrap()));
}

fn classification(c: &mut Criterion) {
    let mut classifier = Classifier::new(&Settings::default()).unwrap();
    let ua = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148";
    let ip: IpAddr = "203.0.113.9".parse().unwrap();
    classifier.assess(Kind::Click, Some(ip), Some(ua));
    c.bench_function("classify/cached_user_agent", |b| {
        b.iter(|| classifier.assess(Kind::Click, Some(black_box(ip)), Some(black_box(ua))))
    });
    // A distinct user agent every time: woothee, the rule list and a cache insert.
    let mut n = 0u64;
    c.bench_function("classify/uncached_user_agent", |b| {
        b.iter(|| {
            n += 1;
            let ua = format!(
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0.{n} Safari/537.36"
            );
            classifier.assess(Kind::Click, Some(ip), Some(&ua))
        })
    });
    // A distinct machine every time that only the vendored crawler list
    // knows: every rule and all ~1,500 list patterns run, and one matches.
    let mut n = 0u64;
    c.bench_function("classify/uncached_user_agent_list_match", |b| {
        b.iter(|| {
            n += 1;
            let ua = format!("Mozilla/5.0 (compatible; NetcraftSurveyAgent/1.{n}; +info@netcraft.com)");
            classifier.assess(Kind::Click, Some(ip), Some(&ua))
        })
    });
    // A distinct agent every time that no rule or list knows and woothee
    // cannot read: rules, list and the people's-client shapes all run.
    let mut n = 0u64;
    c.bench_function("classify/uncached_user_agent_unknown", |b| {
        b.iter(|| {
            n += 1;
            let ua = format!("AcmeSyncAgent/{n}.0 (build 20261129; x86_64) libacme/2.3");
            classifier.assess(Kind::Click, Some(ip), Some(&ua))
        })
    });
    // What start-up (and a rule reload) costs: compiling the lists.
    c.bench_function("classify/compile_crawler_list", |b| b.iter(CrawlerList::builtin));
    c.bench_function("classify/compile_rules", |b| b.iter(Rules::builtin));
    let networks = NetworkList::builtin();
    let addrs: Vec<IpAddr> = ["40.107.1.1", "17.58.2.3", "203.0.113.9", "2a01:111:f400::1"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    c.bench_function("classify/network_lookup", |b| {
        b.iter(|| addrs.iter().map(|a| networks.find(black_box(*a)).is_some() as u8).sum::<u8>())
    });
}

fn events(c: &mut Criterion) {
    let ring = KeyRing::parse(&Key::generate_entry(&KeyId::new("k1").unwrap())).unwrap();
    let token = token::open(&ring, &token::seal(&ring, &claims()).unwrap(), 0).unwrap();
    let at = time::OffsetDateTime::now_utc();
    let hit = Hit {
        id: waymark::hit::HitId::mint(at),
        token,
        at,
        method: Method::Get,
        client_ip: Some("203.0.113.9".parse().unwrap()),
        user_agent: Some("Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X)".into()),
        sealed: None,
    };
    let mut classifier = Classifier::new(&Settings::default()).unwrap();
    let judgement = classifier.judge(&hit).judgement;
    let settings = waymark::event::Settings::default();
    // The pipeline's way: one JSON buffer reused for every event.
    let mut json = Vec::new();
    c.bench_function("event/build_and_encode", |b| {
        b.iter(|| Event::from_hit(black_box(&hit), &judgement, &settings).encode(&mut json).json.len())
    });
}

/// One whole pixel request through the edge, in process: route, open the
/// token, build the hit, hand it to the pipeline (which writes to /dev/null
/// on its own thread), and build the response.
fn whole_request(c: &mut Criterion) {
    use std::sync::Arc;
    use waymark::edge::{Edge, route};
    let ring = KeyRing::parse(&Key::generate_entry(&KeyId::new("k1").unwrap())).unwrap();
    let open = Claims { target: Target::Open, ..claims() };
    let path = format!("/o/{}.gif", token::seal(&ring, &open).unwrap());
    let sink = Box::new(waymark::sink::file::FileSink::open(std::path::Path::new("/dev/null")).unwrap());
    let classifier = Classifier::new(&Settings::default()).unwrap();
    let options = waymark::pipeline::Options {
        events: waymark::event::Settings { repeat_window_ms: 60_000, ..Default::default() },
        capacity: 1 << 20,
        flush_interval: std::time::Duration::from_secs(1),
        durable_within: std::time::Duration::from_secs(3),
        judge_threads: 1,
    };
    let (recorder, _pipeline) = waymark::pipeline::Pipeline::start(classifier, sink, options);
    let stats = recorder.stats().clone();
    let metrics = Arc::new(waymark::metrics::Metrics::new(vec![stats]));
    let tenancy = waymark::tenancy::Tenancy::new(
        Arc::new(ring),
        waymark::destination::Destination::parse("http://127.0.0.1:8080").unwrap(),
        vec![],
        waymark::tenancy::UnknownHosts::Default,
    );
    let edge = Edge::new(
        Arc::new(tenancy),
        recorder,
        None,
        waymark::edge::ClientAddress {
            trusted_proxies: vec![],
            header: waymark::hit::ClientIpHeader::XForwardedFor,
        },
        Arc::default(),
        metrics,
        waymark::ratelimit::ClientLimit::per_minute(std::num::NonZeroU32::new(30).unwrap()),
    );
    let req = http::Request::get(path.as_str())
        .header("user-agent", "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15")
        .body(())
        .unwrap();
    let peer: std::net::SocketAddr = "203.0.113.9:50000".parse().unwrap();
    c.bench_function("request/pixel_in_process", |b| {
        b.iter(|| edge.answer(black_box(&req), route(req.uri().path()), peer))
    });
}

/// The judge alone, as one judge thread (or `waymark judge`) runs it: a
/// realistic stream of hits over 300 messages, each judged against its
/// message's history and its events encoded and handed to a sink that
/// discards them. Hits a second per judge core is 1 / this time.
fn judge(c: &mut Criterion) {
    struct Discard;
    impl waymark::sink::Sink for Discard {
        fn publish(&mut self, e: &waymark::event::EncodedEvent) -> Result<(), waymark::sink::SinkError> {
            black_box(e.json.len());
            Ok(())
        }
        fn flush(&mut self) -> Result<(), waymark::sink::SinkError> {
            Ok(())
        }
        fn sync(&mut self) -> Result<(), waymark::sink::SinkError> {
            Ok(())
        }
    }
    let ring = KeyRing::parse(&Key::generate_entry(&KeyId::new("k1").unwrap())).unwrap();
    let user_agents = [
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        "Mozilla/5.0 (Windows; U; Windows NT 5.1; de; rv:1.9.2.3) Gecko/20100401 Firefox/3.6.3 (via ggpht.com GoogleImageProxy)",
        "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17029; Pro)",
        "curl/8.5.0",
    ];
    let now = time::OffsetDateTime::now_utc();
    let hits: Vec<Hit> = (0..3000u32)
        .map(|i| {
            let claims = Claims {
                target: if i % 3 == 0 { Target::Open } else { claims().target },
                message_id: format!("em_{}", i % 300),
                sent_at: now.unix_timestamp() as u64 - 3600,
                ..claims()
            };
            let at = now + time::Duration::milliseconds(i64::from(i));
            let sealed = token::seal(&ring, &claims).unwrap();
            Hit {
                id: waymark::hit::HitId::mint(at),
                token: token::open(&ring, &sealed, 0).unwrap(),
                at,
                method: Method::Get,
                client_ip: Some(IpAddr::from([203, 0, 113, (i % 200) as u8])),
                user_agent: Some(user_agents[i as usize % user_agents.len()].into()),
                sealed: Some(sealed.into()),
            }
        })
        .collect();
    // The same hits as the edge forwards them with `judge = "kafka"`.
    let records: Vec<Vec<u8>> = hits
        .iter()
        .map(|hit| {
            let mut out = Vec::new();
            HitRecord::of(hit, hit.sealed.as_deref().unwrap()).encode(&mut out);
            out
        })
        .collect();
    let settings = waymark::event::Settings::default();
    let stats = std::sync::Arc::new(waymark::pipeline::Stats::default());
    let mut judge =
        waymark::pipeline::Judge::new(Classifier::new(&Settings::default()).unwrap(), settings, stats);
    let mut sink = Discard;
    let mut next = hits.iter().cycle();
    c.bench_function("judge/hit_to_events", |b| {
        b.iter(|| judge.handle(black_box(next.next().unwrap()), &mut sink))
    });
    // `waymark judge`'s work per record besides Kafka: read the hit record,
    // open its token again, judge, encode the events.
    let mut judge = waymark::pipeline::Judge::new(
        Classifier::new(&Settings::default()).unwrap(),
        waymark::event::Settings::default(),
        std::sync::Arc::new(waymark::pipeline::Stats::default()),
    );
    let mut next = records.iter().cycle();
    c.bench_function("judge/hit_record_to_events", |b| {
        b.iter(|| {
            let record = HitRecord::decode(black_box(next.next().unwrap())).unwrap();
            judge.handle(&record.open(&ring).unwrap(), &mut sink)
        })
    });
    let mut next = hits.iter().cycle();
    let mut out = Vec::with_capacity(512);
    c.bench_function("edge/hit_record_encode", |b| {
        b.iter(|| {
            let hit = next.next().unwrap();
            out.clear();
            HitRecord::of(black_box(hit), hit.sealed.as_deref().unwrap()).encode(&mut out);
            out.len()
        })
    });
}

/// The network look-up with 500,000 published prefixes loaded (the size of
/// Apple's iCloud Private Relay egress list and more), half IPv4 /24–/32,
/// half IPv6 /40–/64; prints the memory they take.
fn published_networks(c: &mut Criterion) {
    use waymark::classify::Verdict;
    use waymark::classify::published::Published;
    let rss = || {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        statm.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()).unwrap_or(0) * 4096
    };
    // Measured from before the prefixes are made: the list keeps its maps,
    // the input is freed once added.
    let before = rss();
    // A fixed-seed generator: the same prefixes on every run.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut nets = Vec::with_capacity(500_000);
    for i in 0..500_000u32 {
        let r = next();
        let net = if i % 2 == 0 {
            let len = 24 + (r % 9) as u8;
            ipnet::IpNet::V4(
                ipnet::Ipv4Net::new(std::net::Ipv4Addr::from((r >> 8) as u32), len).unwrap().trunc(),
            )
        } else {
            let len = 40 + (r % 25) as u8;
            let bits = ((r as u128) << 64) | next() as u128;
            ipnet::IpNet::V6(ipnet::Ipv6Net::new(std::net::Ipv6Addr::from(bits), len).unwrap().trunc())
        };
        nets.push(net);
    }
    let probes: Vec<IpAddr> = nets
        .iter()
        .take(1024)
        .enumerate()
        .map(|(i, n)| if i % 4 == 0 { IpAddr::from([203, 0, 113, i as u8]) } else { n.addr() })
        .collect();
    let mut list = NetworkList::builtin();
    list.add(Published { operator: "relay".into(), verdict: Verdict::Proxy, nets }, "generated");
    println!(
        "published networks: {} prefixes, RSS grew {:.1} MiB",
        list.prefixes(),
        rss().saturating_sub(before) as f64 / (1 << 20) as f64
    );
    let mut i = 0;
    c.bench_function("classify/network_lookup_500k_prefixes", |b| {
        b.iter(|| {
            i = (i + 1) % probes.len();
            list.find(black_box(probes[i])).is_some()
        })
    });
}

criterion_group!(benches, tokens, classification, events, whole_request, judge, published_networks);
criterion_main!(benches);
