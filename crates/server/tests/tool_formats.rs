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

/// The repeat-call guard's constraint for a choice sent back: any text, and no call opening
/// in any format (Hermes' tag is one token of Qwen's vocabulary; the others are refused at the
/// token that completes them).
#[test]
fn a_choice_sent_back_is_text_in_which_no_call_opens() {
    let m = common::qwen();
    let msgs: Vec<slm_server::openai::ChatMessage> = serde_json::from_value(json!([
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "{\"temperature_c\": 4}"}]))
    .unwrap();
    let offered = Offered { names: vec!["get_weather".into()], choice: ToolChoice::Auto };
    let guard = slm_server::repeat_guard::GuardSpec::new(&msgs, &offered).unwrap();
    assert!(guard.repeats("get_weather", "{\"city\":\"Oslo\"}"));
    let spec = slm_server::repeat_guard::GuardSpec::answer_only();
    let eos = m.tokenizer.end_of_generation()[0];
    // Whether the grammar takes all of `text` (and may end there).
    let takes = |text: &str, parse_special: bool| {
        let ids = m.tokenizer.encode(text, false, parse_special).unwrap();
        let mut c = m.grammar.compile(&spec).unwrap();
        for (i, &id) in ids.iter().enumerate() {
            if !c.mask().unwrap().unwrap().is_allowed(id) {
                return false;
            }
            c.accept(id, &m.tokenizer.decode(&ids[..=i], false));
        }
        c.mask().unwrap().is_some_and(|mask| mask.is_allowed(eos))
    };
    assert!(takes("It is 4 °C in Oslo {per the tool} [as reported].\n", false));
    assert_eq!(m.tokenizer.encode("<tool_call>", false, true).unwrap().len(), 1, "Hermes' tag is one token");
    for f in FORMATS {
        let call = f.write(&[("get_weather", "{\"city\": \"Oslo\"}")]);
        for special in [false, true] {
            assert!(!takes(&call, special), "{}: {call}", f.name);
            assert!(!takes(&format!("Sure. {call}"), special), "{}: {call}", f.name);
        }
    }
}
