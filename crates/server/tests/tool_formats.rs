//! Every tool-call format's own text, after some free text, goes through the `auto` grammar
//! token by token with the real model's vocabulary: the format's trigger fires, the grammar
//! allows each following token and ends where the call ends, and the scanner reads the call.
//! So trigger, grammar and parser of each `tool_format` entry agree.

mod common;

use serde_json::json;
use slm_server::tool_format::{FORMATS, HERMES};
use slm_server::tool_stream;
use slm_server::tools::{Offered, ToolChoice};

#[test]
fn each_format_passes_its_trigger_grammar_and_scanner() {
    let m = common::qwen();
    let tools = [json!({"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})];
    let names = vec!["get_weather".to_string()];
    let offered = Offered { names: names.clone(), choice: ToolChoice::Auto };
    let spec = slm_server::grammar::tool_calls(&tools, &offered, true, &HERMES).unwrap().unwrap();
    let eos = m.tokenizer.end_of_generation()[0];
    for f in FORMATS {
        let calls = [("get_weather", "{\"city\": \"Hà Nội\"}"), ("get_weather", "{\"city\": \"Oslo\"}")];
        let text = format!("Let me check. {}", f.write(&calls));
        let ids = m.tokenizer.encode(&text, false, false).unwrap();
        let mut c = m.grammar.compile(&spec).unwrap();
        let mut enforced = 0;
        for (i, &id) in ids.iter().enumerate() {
            if let Some(mask) = c.mask().unwrap() {
                assert!(mask.is_allowed(id), "{}: token {i} ({id}) of {text:?} refused", f.name);
                enforced += 1;
            }
            c.accept(id, &m.tokenizer.decode(&ids[..=i], false));
        }
        assert!(enforced > 0, "{}: the trigger never fired on {text:?}", f.name);
        // The calls may end here: end of generation is allowed (or the grammar is complete).
        assert!(c.is_done() || c.mask().unwrap().is_some_and(|mask| mask.is_allowed(eos)), "{}: cannot end", f.name);
        let (content, got) = tool_stream::split(&text, &names);
        assert_eq!(content.as_deref(), Some("Let me check."), "{}", f.name);
        let got: Vec<(&str, &str)> = got.iter().map(|c| (c.name.as_str(), c.arguments.as_str())).collect();
        assert_eq!(got, calls, "{}", f.name);
    }
}
