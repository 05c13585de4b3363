//! Constrained decoding on the real default model: outputs follow their JSON Schema, Lark
//! grammar or regex; masks are per sequence, so a constrained request gives bit-identical
//! tokens alone or batched with others; triggers leave the text free until they match; a bad
//! schema is refused when it is compiled.

mod common;

use common::*;
use serde_json::{json, Value};
use slm_engine::{
    ConstraintSpec, EngineConfig, EngineError, EngineHandle, Event, FinishReason, Grammar, Request, SamplingParams,
};

fn request(
    e: &EngineHandle,
    prompt: &str,
    params: SamplingParams,
    max_tokens: usize,
    constraint: Option<ConstraintSpec>,
) -> Request {
    let m = e.model();
    let msgs = [json!({"role": "user", "content": prompt})];
    let text = m.chat_template.render_prompt(&m.tokenizer, &msgs, None).unwrap();
    let mut r = Request::new(m.tokenizer.encode(&text, true, true).unwrap(), params, max_tokens);
    r.constraint = constraint.map(|c| m.grammar.compile(&c).unwrap());
    r
}

/// Tokens, logprob bits and text of a finished request.
fn run(e: &EngineHandle, reqs: &[Request]) -> Vec<(Vec<u32>, Vec<u32>, String, FinishReason)> {
    let streams: Vec<_> = reqs.iter().map(|r| e.submit(r.clone()).unwrap()).collect();
    streams
        .into_iter()
        .map(|mut s| {
            let (mut toks, mut bits, mut text) = (vec![], vec![], String::new());
            loop {
                match s.blocking_next().expect("stream ended without Finished") {
                    Event::Token(t) => {
                        toks.push(t.token);
                        bits.push(t.logprob.to_bits());
                        text.push_str(&t.text);
                    }
                    Event::Finished(f) => return (toks, bits, text + &f.text, f.reason),
                    Event::Error(err) => panic!("{err}"),
                    Event::Progress(_) => {}
                }
            }
        })
        .collect()
}

fn schema(s: Value) -> Option<ConstraintSpec> {
    Some(ConstraintSpec::new(Grammar::JsonSchema(s)))
}

#[test]
fn outputs_follow_their_grammars_and_batching_changes_nothing() {
    let e = EngineHandle::start(model(QWEN), EngineConfig::default()).unwrap();
    let person = json!({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 120}, "admin": {"type": "boolean"}}, "required": ["name", "age", "admin"], "additionalProperties": false});
    let colors = json!({"type": "array", "items": {"type": "string", "enum": ["red", "green", "blue"]}, "minItems": 2, "maxItems": 4});
    let seeded = |seed| SamplingParams {
        temperature: 0.8,
        top_p: 0.95,
        seed: Some(seed),
        top_logprobs: 3,
        ..Default::default()
    };
    let reqs = vec![
        request(&e, "Describe a user called Kim as JSON.", SamplingParams::greedy(), 60, schema(person.clone())),
        request(&e, "Describe a user called Kim as JSON.", seeded(7), 60, schema(person.clone())),
        request(&e, "Pick some colors.", seeded(11), 40, schema(colors)),
        request(
            &e,
            "Is water wet? Answer yes or no.",
            SamplingParams::greedy(),
            10,
            Some(ConstraintSpec::new(Grammar::Regex("(yes|no)\\.".into()))),
        ),
        request(
            &e,
            "Name an animal.",
            seeded(3),
            10,
            Some(ConstraintSpec::new(Grammar::Lark(
                "start: \"The \" ANIMAL \".\"\nANIMAL: \"cat\" | \"dog\" | \"owl\"".into(),
            ))),
        ),
        request(&e, "Write a haiku about rain.", SamplingParams::greedy(), 24, None),
        request(&e, "Write a haiku about snow.", seeded(5), 24, None),
    ];
    let alone: Vec<_> = reqs.iter().map(|r| run(&e, std::slice::from_ref(r)).remove(0)).collect();
    let together = run(&e, &reqs);
    assert_eq!(alone, together, "a constrained request changed under batching");

    for (_, _, text, reason) in &alone[..2] {
        assert_eq!(*reason, FinishReason::Stop, "{text}");
        let v: Value = serde_json::from_str(text).unwrap_or_else(|err| panic!("not JSON ({err}): {text}"));
        assert!(v["name"].is_string() && v["admin"].is_boolean(), "{text}");
        assert!((0..=120).contains(&v["age"].as_i64().unwrap()), "{text}");
        assert_eq!(v.as_object().unwrap().len(), 3, "{text}");
    }
    let v: Value = serde_json::from_str(&alone[2].2).unwrap();
    let items = v.as_array().unwrap();
    assert!(
        (2..=4).contains(&items.len()) && items.iter().all(|c| ["red", "green", "blue"].contains(&c.as_str().unwrap())),
        "{v}"
    );
    assert!(["yes.", "no."].contains(&alone[3].2.as_str()), "{}", alone[3].2);
    assert!(["The cat.", "The dog.", "The owl."].contains(&alone[4].2.as_str()), "{}", alone[4].2);
    // The engine updates its gauges after it sends the last events.
    wait_for(|| e.stats().kv_blocks_used == 0);
}

#[test]
fn a_trigger_leaves_text_free_until_it_matches() {
    let e = EngineHandle::start(model(QWEN), EngineConfig::default()).unwrap();
    let prompt = "Count from 1 to 20, separated by commas.";
    let free = run(&e, &[request(&e, prompt, SamplingParams::greedy(), 40, None)]).remove(0).2;
    assert!(free.contains("6, 7"), "{free}");
    // From the first "6," on, the grammar takes over and ends the output.
    let spec =
        ConstraintSpec { grammar: Grammar::Lark("start: \"6,\" \" and so on.\"".into()), triggers: vec!["6,".into()] };
    let (_, _, text, reason) = run(&e, &[request(&e, prompt, SamplingParams::greedy(), 40, Some(spec))]).remove(0);
    let cut = free.find("6,").unwrap();
    assert_eq!(text, format!("{}6, and so on.", &free[..cut]));
    assert_eq!(reason, FinishReason::Stop);
    // A trigger whose text the grammar cannot accept steps aside: the output stays free.
    let spec = ConstraintSpec { grammar: Grammar::Lark("start: \"x\"".into()), triggers: vec!["6,".into()] };
    assert_eq!(run(&e, &[request(&e, prompt, SamplingParams::greedy(), 40, Some(spec))]).remove(0).2, free);
}

#[test]
fn invalid_schemas_are_refused_when_compiled() {
    let e = EngineHandle::start(model(QWEN), EngineConfig::default()).unwrap();
    for bad in [
        ConstraintSpec::new(Grammar::JsonSchema(json!({"type": "frobnicate"}))),
        ConstraintSpec::new(Grammar::JsonSchema(json!({"properties": {"a": {"$ref": "#/$defs/missing"}}}))),
        ConstraintSpec::new(Grammar::JsonSchema(json!([1, 2]))),
        ConstraintSpec::new(Grammar::Lark("start: (".into())),
        ConstraintSpec::new(Grammar::Regex("(".into())),
        ConstraintSpec { grammar: Grammar::Regex("a".into()), triggers: vec!["(".into()] },
    ] {
        assert!(matches!(e.model().grammar.compile(&bad), Err(EngineError::InvalidGrammar(_))), "{bad:?}");
    }
    assert_eq!(e.stats().num_waiting, 0);
}

/// GBNF grammars in llama.cpp's style (rules with dashes, classes, repetition counts, groups
/// across lines, comments) hold the real model's output once rewritten into Lark.
#[test]
fn gbnf_grammars_hold_the_output() {
    let e = EngineHandle::start(model(QWEN), EngineConfig::default()).unwrap();
    let greedy = SamplingParams { temperature: 0.0, ..Default::default() };
    type Check = fn(&str) -> bool;
    let cases: [(&str, &str, Check); 3] = [
        (
            // A bullet list of two to four items.
            "# a short list\nroot ::= item{2,4}\nitem ::= \"- \" [^\\r\\n\\x0b]+ \"\\n\"\n",
            "List some fruits.",
            |t| {
                let lines: Vec<&str> = t.lines().collect();
                (2..=4).contains(&lines.len()) && lines.iter().all(|l| l.starts_with("- ") && l.len() > 2)
            },
        ),
        (
            // Arithmetic: numbers and operators only.
            "root ::= (expr \"=\" ws term \"\\n\")+\nexpr ::= term ([-+*/] term)*\nterm ::= ident | num | \"(\" ws expr \")\" ws\nident ::= [a-z] [a-z0-9_]* ws\nnum ::= [0-9]+ ws\nws ::= [ \\t\\n]*\n",
            "Write two equations.",
            |t| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || " \t\n=+-*/()_".contains(c)),
        ),
        (
            // A yes/no answer with an optional reason, across lines inside a group.
            "root ::= (\n  \"yes\" |\n  \"no\"\n) (\", because \" [a-z ]{1,40})? \".\"\n",
            "Is the sky blue? Answer yes or no.",
            |t| (t.starts_with("yes") || t.starts_with("no")) && t.ends_with('.'),
        ),
    ];
    for (gbnf, prompt, ok) in cases {
        let lark = slm_engine::gbnf::to_lark(gbnf).unwrap();
        let spec = Some(ConstraintSpec::new(Grammar::Lark(lark.clone())));
        let out = run(&e, &[request(&e, prompt, greedy.clone(), 80, spec)]);
        let (_, _, text, reason) = &out[0];
        assert!(ok(text), "{gbnf}\n→ {lark}\n→ {text:?} ({reason:?})");
    }
}
