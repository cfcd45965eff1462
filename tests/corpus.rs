//! Accuracy of the classifier on a labelled corpus of real user agents
//! (tests/data/ua_corpus.tsv, every row citing its public source).
//!
//! Prints precision and recall per verdict, and accuracy per source. The
//! headline figure leaves out the rows whose user agent is one of the
//! vendored crawler list's own `instances`: a list's examples do not
//! measure that list. Fails if the headline drops below its floor, or if
//! any person's client (a `human` row) is called a scanner or a bot, or is
//! matched by any pattern kept from the vendored list.
//!
//! The rules were tuned while reading that corpus, so its figure flatters
//! them. tests/data/ua_holdout.tsv holds real user agents from public
//! fixtures the rules were never written from (Crawler-Detect, isbot); its
//! test prints the out-of-sample figures per source and per verdict, and
//! every row it gets wrong. Never fix a rule from that file: it would stop
//! being held out.

use std::collections::{BTreeMap, HashSet};

mod labelled;

use labelled::{Row, Tally, origin, pct, person, print_scores, print_verdicts};
use waymark::classify::crawlers::{self, CrawlerList};
use waymark::classify::{Classifier, Settings, Verdict};
use waymark::token::Kind;

/// The headline accuracy must not fall below this (percent). The goal is
/// 97, measured 97.1 (README, Classification).
const HEADLINE_FLOOR: f64 = 97.0;

/// The public fixtures the held-out set is drawn from, each of which must
/// still give it rows.
const HELD_OUT_FILES: [&str; 4] = [
    "github:JayBizzle/Crawler-Detect crawlers.txt",
    "github:JayBizzle/Crawler-Detect devices.txt",
    "github:omrilotan/isbot browsers.yml",
    "github:omrilotan/isbot crawlers.yml",
];

fn corpus() -> Vec<Row> {
    labelled::load("ua_corpus.tsv")
}

/// The vendored list's own example user agents.
fn list_instances() -> HashSet<String> {
    crawlers::entries(crawlers::LIST).unwrap().into_iter().flat_map(|e| e.instances).collect()
}

#[test]
fn classifier_accuracy_on_the_labelled_corpus() {
    let rows = corpus();
    let instances = list_instances();
    let mut classifier = Classifier::new(&Settings::default()).unwrap();

    let (mut all, mut headline_pairs) = (Vec::new(), Vec::new());
    let mut per_source: BTreeMap<String, BTreeMap<Verdict, Tally>> = BTreeMap::new();
    let (mut headline, mut in_list) = (Tally::default(), Tally::default());
    // Whether the hit would count as it should: people and their proxies
    // against machines, whatever the kind of machine.
    let mut counting = Tally::default();
    let mut wrong = Vec::new();
    let mut humans_as_machines = Vec::new();
    for row in &rows {
        let got = classifier.assess(Kind::Open, None, Some(&row.ua)).verdict;
        let right = got == row.truth;
        all.push((row.truth, got));
        let listed = instances.contains(&row.ua);
        let origin = if listed { "crawler-user-agents instances".to_owned() } else { origin(&row.source) };
        let t = per_source.entry(origin).or_default().entry(row.truth).or_default();
        t.rows += 1;
        t.right += right as usize;
        if row.signal {
            let tally = if listed { &mut in_list } else { &mut headline };
            tally.rows += 1;
            tally.right += right as usize;
            if !listed {
                headline_pairs.push((row.truth, got));
                counting.rows += 1;
                counting.right += (person(got) == person(row.truth)) as usize;
            }
        }
        if !right {
            wrong.push(format!("  {} as {}: {} ({})", row.truth.as_str(), got.as_str(), row.ua, row.source));
        }
        if row.truth == Verdict::Human && matches!(got, Verdict::Scanner | Verdict::Bot) {
            humans_as_machines.push(row.ua.clone());
        }
    }

    println!(
        "corpus: {} rows; {} carry the signal in the user agent and are not the vendored list's own instances",
        rows.len(),
        headline.rows
    );
    print_verdicts("all rows:", &all);
    print_verdicts("headline rows (signal in the user agent, not the list's instances):", &headline_pairs);
    println!("per source (rows, accuracy) by true verdict:");
    for (origin, by_verdict) in &per_source {
        let total = Tally {
            rows: by_verdict.values().map(|t| t.rows).sum(),
            right: by_verdict.values().map(|t| t.right).sum(),
        };
        let detail: Vec<String> =
            by_verdict.iter().map(|(v, t)| format!("{} {} {}", v.as_str(), t.rows, t.pct())).collect();
        println!("  {origin:<40} {:>5} {:>7}   {}", total.rows, total.pct(), detail.join(", "));
    }
    println!("the vendored list's own instances: {} ({}/{})", in_list.pct(), in_list.right, in_list.rows);
    println!(
        "headline rows where person or machine is right (what decides counting): {} ({}/{})",
        counting.pct(),
        counting.right,
        counting.rows
    );
    println!("HEADLINE: {} ({}/{})", headline.pct(), headline.right, headline.rows);
    if !wrong.is_empty() {
        println!("misclassified ({}):\n{}", wrong.len(), wrong.join("\n"));
    }
    assert!(humans_as_machines.is_empty(), "human clients called scanner or bot: {humans_as_machines:#?}");
    assert!(rows.len() >= 1_000, "the corpus has only {} rows", rows.len());
    let accuracy = 100.0 * headline.right as f64 / headline.rows as f64;
    assert!(accuracy >= HEADLINE_FLOOR, "headline accuracy {accuracy:.1}% is below {HEADLINE_FLOOR}%");
}

/// The refresh script's guard: a pattern kept from the vendored list must
/// not match any person's client of either set, whatever our own rules
/// would say first.
#[test]
fn no_kept_list_pattern_matches_a_person() {
    let list = CrawlerList::builtin();
    let mut people = corpus();
    people.extend(labelled::load("ua_holdout.tsv"));
    let hits: Vec<String> = people
        .iter()
        .filter(|r| r.truth == Verdict::Human)
        .filter_map(|r| list.find(&r.ua).map(|e| format!("{:?} matches {} ({})", e.pattern, r.ua, r.source)))
        .collect();
    assert!(hits.is_empty(), "deny these in data/crawler-deny.txt:\n{}", hits.join("\n"));
}

/// What calling a user agent that no rule or list knows, and that looks
/// like no person's client, a machine (`ua:unknown-agent`) costs and gains:
/// the corpus judged with and without it.
#[test]
fn the_unknown_agent_model_costs_and_gains() {
    use waymark::classify::rules::BUILTIN;
    let line = "unknown_agents = \"bot\"\n";
    let (with, without) = if BUILTIN.contains(line) {
        (BUILTIN.to_owned(), BUILTIN.replace(line, ""))
    } else {
        (BUILTIN.replacen("\nversion = ", &format!("\n{line}version = "), 1), BUILTIN.to_owned())
    };
    let dir = tempfile::tempdir().unwrap();
    let classifier = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        Classifier::new(&Settings { rules_file: Some(path), ..Settings::default() }).unwrap()
    };
    let (mut on, mut off) = (classifier("with.toml", &with), classifier("without.toml", &without));
    let instances = list_instances();
    let (mut gained, mut lost, mut people_called_machines) = (0, 0, Vec::new());
    let (mut right_on, mut right_off, mut rows) = (0, 0, 0);
    for row in corpus().iter().filter(|r| r.signal && !instances.contains(&r.ua)) {
        let a = on.assess(Kind::Open, None, Some(&row.ua)).verdict;
        let b = off.assess(Kind::Open, None, Some(&row.ua)).verdict;
        rows += 1;
        right_on += (a == row.truth) as usize;
        right_off += (b == row.truth) as usize;
        if a != b {
            if a == row.truth {
                gained += 1;
            } else if b == row.truth {
                lost += 1;
            }
            if row.truth == Verdict::Human {
                people_called_machines.push(format!("{} ({})", row.ua, row.source));
            }
        }
    }
    println!(
        "unknown-agent model on {rows} headline rows: {} without, {} with; {gained} rows put right, {lost} put wrong, {} people called machines",
        pct(right_off, rows),
        pct(right_on, rows),
        people_called_machines.len()
    );
    for p in &people_called_machines {
        println!("  person called a machine: {p}");
    }
    if BUILTIN.contains(line) {
        assert!(people_called_machines.is_empty(), "the model is on and calls people machines");
    }
}

/// How a held-out row went wrong. A person called a machine
/// costs an engagement; a machine called a person counts a fake one.
fn mistake(truth: Verdict, got: Verdict, ua: &str) -> &'static str {
    let browser_like = ua.starts_with("Mozilla/") || ua.starts_with("Opera/");
    match (person(truth), person(got)) {
        (true, false) => "person called a machine",
        (false, true) if browser_like => "machine called a person (browser-like user agent)",
        (false, true) => "machine called a person (other user agent)",
        (true, true) => "person, wrong kind (human or proxy)",
        (false, false) if truth == Verdict::Scanner => "scanner called bot",
        (false, false) => "bot called scanner",
    }
}

/// The out-of-sample figure: the held-out set, judged by the user agent
/// alone as the corpus is.
#[test]
fn classifier_accuracy_on_the_held_out_set() {
    let rows = labelled::load("ua_holdout.tsv");
    let mut classifier = Classifier::new(&Settings::default()).unwrap();
    let mut by_file: BTreeMap<String, Vec<(Verdict, Verdict)>> = BTreeMap::new();
    let mut all = Vec::new();
    let mut wrong: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.signal) {
        let got = classifier.assess(Kind::Open, None, Some(&row.ua)).verdict;
        by_file.entry(labelled::origin_file(&row.source)).or_default().push((row.truth, got));
        all.push((row.truth, got));
        if got != row.truth {
            let line = format!("  {} as {}: {} ({})", row.truth.as_str(), got.as_str(), row.ua, row.source);
            wrong.entry(mistake(row.truth, got, &row.ua)).or_default().push(line);
        }
    }

    println!("held-out set: {} rows, {} carry the signal in the user agent", rows.len(), all.len());
    print_scores("HELD-OUT, all sources", &all);
    let mut by_origin: BTreeMap<String, Vec<(Verdict, Verdict)>> = BTreeMap::new();
    for (file, pairs) in &by_file {
        by_origin.entry(file.split(' ').next().unwrap_or(file).to_owned()).or_default().extend(pairs);
    }
    for (origin, pairs) in &by_origin {
        print_scores(origin, pairs);
    }
    for (file, pairs) in &by_file {
        print_scores(file, pairs);
    }
    for (kind, lines) in &wrong {
        println!("misclassified, {kind} ({}):\n{}", lines.len(), lines.join("\n"));
    }

    for file in HELD_OUT_FILES {
        assert!(by_file.get(file).is_some_and(|p| !p.is_empty()), "no held-out rows from {file}");
    }
    assert!(all.len() >= 500, "the held-out set has only {} signal rows", all.len());
    // On main 9dc807b, when the set was made, four people were called
    // machines (Amaya, Charon, DuckDuckGo without its Mozilla/ prefix);
    // their shapes were added to people.rs after, so these four rows no
    // longer measure anything out of sample.
    let people_as_machines = wrong.get("person called a machine").map_or(0, Vec::len);
    assert_eq!(people_as_machines, 0, "held-out people called scanner or bot");
}
