//! What constrains a request's output: OpenAI's `response_format`, the offered tools with
//! `tool_choice`, and the text-completion extension fields `json_schema`, `grammar`
//! (llguidance's Lark) and `regex` — each turned into one engine `ConstraintSpec`. The engine
//! compiles it when the request is submitted; a schema it cannot compile comes back as a 400.
//!
//! JSON is constrained to the layout small models were trained on (`json.dumps`: ", " and
//! ": " separators, no free whitespace), which also keeps a model from padding forever.

use serde_json::{json, Map, Value};
use slm_engine::{ConstraintSpec, Grammar};

use crate::error::ApiError;
use crate::tool_format::{Layout, ToolFormat, FORMATS};
use crate::tools::{Offered, ToolChoice};

/// The layout options llguidance reads from a schema's `x-guidance` key.
fn with_layout(mut schema: Value, lenient: bool) -> Value {
    bound_integers(&mut schema);
    if let Value::Object(m) = &mut schema {
        m.entry("x-guidance").or_insert_with(
            || json!({"whitespace_flexible": false, "key_separator": ": ", "item_separator": ", ", "lenient": lenient}),
        );
    }
    schema
}

/// Integers with no bound get one of 16 digits each way, as llama.cpp's converter writes
/// `[1-9][0-9]{0,15}`: otherwise a small model asked for a population writes digits until
/// `max_tokens` and the answer never parses. Values inside `const`, `enum`, `default` and
/// `examples` are data, not schemas, and are left alone.
fn bound_integers(schema: &mut Value) {
    const BOUND: i64 = 9_999_999_999_999_999;
    match schema {
        Value::Object(m) => {
            let integer = match m.get("type") {
                Some(Value::String(t)) => t == "integer",
                Some(Value::Array(ts)) => ts.iter().any(|t| t == "integer"),
                _ => false,
            };
            if integer {
                if !m.contains_key("maximum") && !m.contains_key("exclusiveMaximum") {
                    m.insert("maximum".into(), json!(BOUND));
                }
                if !m.contains_key("minimum") && !m.contains_key("exclusiveMinimum") {
                    m.insert("minimum".into(), json!(-BOUND));
                }
            }
            for (k, v) in m.iter_mut() {
                if !matches!(k.as_str(), "const" | "enum" | "default" | "examples") {
                    bound_integers(v);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(bound_integers),
        _ => {}
    }
}

/// `response_format`: `text` (none), `json_object`, or `json_schema` with its `schema`.
pub fn response_format(v: Option<&Value>) -> Result<Option<ConstraintSpec>, ApiError> {
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(None) };
    let kind = v.get("type").and_then(Value::as_str).ok_or_else(|| {
        ApiError::invalid(
            "response_format.type",
            "`response_format` needs a `type`: \"text\", \"json_object\" or \"json_schema\"",
        )
    })?;
    match kind {
        "text" => Ok(None),
        "json_object" => {
            Ok(Some(ConstraintSpec::new(Grammar::JsonSchema(with_layout(json!({"type": "object"}), false)))))
        }
        "json_schema" => {
            let schema = v.pointer("/json_schema/schema").cloned().unwrap_or_else(|| json!({"type": "object"}));
            if !schema.is_object() {
                return Err(ApiError::invalid(
                    "response_format.json_schema.schema",
                    "`response_format.json_schema.schema` must be a JSON Schema object",
                ));
            }
            Ok(Some(ConstraintSpec::new(Grammar::JsonSchema(with_layout(schema, false)))))
        }
        other => Err(ApiError::invalid(
            "response_format.type",
            format!(
                "unknown `response_format.type` \"{other}\"; expected \"text\", \"json_object\" or \"json_schema\""
            ),
        )),
    }
}

/// The completion extension fields; at most one may be given. Returns the constraint and the
/// field it came from (to name in a compile error).
pub fn completion_fields(
    json_schema: Option<&Value>,
    grammar: Option<&str>,
    regex: Option<&str>,
    format: Option<&Value>,
) -> Result<Option<(ConstraintSpec, &'static str)>, ApiError> {
    let given = [json_schema.is_some(), grammar.is_some(), regex.is_some(), format.is_some_and(|v| !v.is_null())]
        .iter()
        .filter(|&&b| b)
        .count();
    if given > 1 {
        return Err(ApiError::invalid(
            "grammar",
            "give at most one of `json_schema`, `grammar`, `regex` and `response_format`",
        ));
    }
    if let Some(s) = json_schema {
        if !s.is_object() {
            return Err(ApiError::invalid("json_schema", "`json_schema` must be a JSON Schema object"));
        }
        return Ok(Some((ConstraintSpec::new(Grammar::JsonSchema(with_layout(s.clone(), false))), "json_schema")));
    }
    if let Some(g) = grammar {
        // GBNF (llama.cpp's format) is rewritten into Lark; anything else is Lark already.
        let lark = if slm_engine::gbnf::is_gbnf(g) {
            slm_engine::gbnf::to_lark(g).map_err(|e| ApiError::invalid("grammar", e))?
        } else {
            g.to_string()
        };
        return Ok(Some((ConstraintSpec::new(Grammar::Lark(lark)), "grammar")));
    }
    if let Some(r) = regex {
        return Ok(Some((ConstraintSpec::new(Grammar::Regex(r.to_string())), "regex")));
    }
    Ok(response_format(format)?.map(|c| (c, "response_format")))
}

/// The grammar of calls to the offered tools. `required` and named choices hold the output to
/// calls in the model's own format (`native`, from its chat template); `auto` leaves the text
/// free until the model opens a call in any format of `tool_format::FORMATS` (each format's
/// trigger), then holds it to a well-formed, schema-valid call in that format. Several calls
/// are allowed when `parallel`, up to `MAX_PARALLEL_CALLS`.
pub fn tool_calls(
    tools: &[Value],
    offered: &Offered,
    parallel: bool,
    native: &'static ToolFormat,
) -> Result<Option<ConstraintSpec>, ApiError> {
    let mut defs = Map::new();
    let mut branches = Vec::new();
    let mut strict = true;
    for (i, t) in tools.iter().enumerate() {
        let Some(name) = t.pointer("/function/name").and_then(Value::as_str) else { continue };
        if !offered.names.iter().any(|n| n == name) {
            continue;
        }
        let params = t.pointer("/function/parameters").cloned().unwrap_or_else(|| json!({"type": "object"}));
        if !params.is_object() {
            return Err(ApiError::invalid(
                "tools",
                format!("the parameters of tool `{name}` must be a JSON Schema object"),
            ));
        }
        let params = if params.to_string().contains("\"$ref\"")
            || params.get("$defs").is_some()
            || params.get("definitions").is_some()
        {
            namespaced(params, i, &mut defs)
        } else {
            params
        };
        strict &= t.pointer("/function/strict").and_then(Value::as_bool).unwrap_or(false);
        branches.push((name.to_string(), params));
    }
    if branches.is_empty() {
        return Ok(None);
    }
    // One call object: `{"name": <tool>, <key>: <its parameters>}` for each offered tool.
    let calls = |keys: &[&str]| {
        let mut body = Map::new();
        if !defs.is_empty() {
            body.insert("$defs".into(), Value::Object(defs.clone()));
        }
        let any: Vec<Value> = keys
            .iter()
            .flat_map(|key| {
                branches.iter().map(move |(name, params)| {
                    json!({
                        "type": "object",
                        "properties": {"name": {"const": name}, *key: params},
                        "required": ["name", key],
                        "additionalProperties": false
                    })
                })
            })
            .collect();
        body.insert("anyOf".into(), Value::Array(any));
        Value::Object(body)
    };
    // Tools written for other servers use keywords llguidance does not know: unless a tool
    // asks for strict mode, those are ignored rather than refused.
    let strict_layout = with_layout(calls(&["arguments"]), !strict);
    // A named choice is one call of that function.
    let parallel = parallel && !matches!(offered.choice, ToolChoice::Named(_));
    let formats: Vec<&ToolFormat> = match offered.choice {
        ToolChoice::Auto => FORMATS.iter().collect(),
        ToolChoice::Required | ToolChoice::Named(_) => vec![native],
    };
    let starts: Vec<String> = formats.iter().map(|f| f.rule()).collect();
    let mut lark = format!("start: {}\ncall_body: %json {strict_layout}\n", starts.join(" | "));
    for f in &formats {
        lark.push_str(&f.lark(parallel));
    }
    if formats.iter().any(|f| f.layout == Layout::Bare) {
        // Models that skip the tags write the call as JSON, often fenced and indented, with
        // Llama 3's `parameters` as often as `arguments`: held to the schema in the layout
        // the model began with.
        let mut flexible = calls(&["arguments", "parameters"]);
        bound_integers(&mut flexible);
        flexible.as_object_mut().expect("built as an object").insert("x-guidance".into(), json!({"lenient": !strict}));
        lark.push_str(&format!(
            "flex_body: %json {flexible}\nFENCE: /```(json)?[ \\t\\n]*/\nCLOSE: /[ \\t\\n]*```/\nWS: /[ \\t\\n]+/\n"
        ));
    }
    let triggers = match offered.choice {
        ToolChoice::Auto => formats.iter().map(|f| f.trigger(&offered.names, parallel)).collect(),
        ToolChoice::Required | ToolChoice::Named(_) => Vec::new(),
    };
    Ok(Some(ConstraintSpec { grammar: Grammar::Lark(lark), triggers }))
}

/// Moves tool `i`'s schema to `$defs/t{i}` and its definitions beside it as `t{i}_Name`,
/// rewriting its `$ref`s, so that tools' definitions cannot collide and references relative
/// to the tool's own root (`#`, `#/properties/…`) keep their meaning in the combined schema.
fn namespaced(mut params: Value, i: usize, defs: &mut Map<String, Value>) -> Value {
    let ns = format!("t{i}");
    let mut own = Vec::new();
    for key in ["$defs", "definitions"] {
        if let Some(Value::Object(d)) = params.as_object_mut().and_then(|m| m.remove(key)) {
            own.extend(d);
        }
    }
    for (name, mut schema) in own {
        rewrite_refs(&mut schema, &ns);
        defs.insert(format!("{ns}_{name}"), schema);
    }
    rewrite_refs(&mut params, &ns);
    defs.insert(ns.clone(), params);
    json!({"$ref": format!("#/$defs/{ns}")})
}

fn rewrite_refs(v: &mut Value, ns: &str) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => {
                        *r = if let Some(rest) = r.strip_prefix("#/$defs/").or_else(|| r.strip_prefix("#/definitions/"))
                        {
                            format!("#/$defs/{ns}_{rest}")
                        } else if r == "#" {
                            format!("#/$defs/{ns}")
                        } else if let Some(rest) = r.strip_prefix("#/") {
                            format!("#/$defs/{ns}/{rest}")
                        } else {
                            r.clone() // not local: left to llguidance to refuse
                        };
                    }
                    (_, x) => rewrite_refs(x, ns),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rewrite_refs(x, ns)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tool_format::HERMES;

    #[test]
    fn unbounded_integers_get_sixteen_digits_and_data_is_untouched() {
        let mut s = json!({"type": "object", "properties": {
            "population": {"type": "integer"},
            "age": {"type": "integer", "minimum": 0},
            "maybe": {"type": ["integer", "null"]},
            "type": {"type": "string", "enum": [{"type": "integer"}]},
            "ratio": {"type": "number"}
        }, "$defs": {"n": {"type": "integer", "exclusiveMaximum": 10}}});
        bound_integers(&mut s);
        let p = &s["properties"];
        assert_eq!(p["population"]["maximum"], 9_999_999_999_999_999i64);
        assert_eq!(p["population"]["minimum"], -9_999_999_999_999_999i64);
        assert_eq!(p["age"]["minimum"], 0);
        assert_eq!(p["age"]["maximum"], 9_999_999_999_999_999i64);
        assert!(p["maybe"].get("maximum").is_some());
        assert_eq!(p["type"]["enum"][0], json!({"type": "integer"}), "data in enum stays as it is");
        assert!(p["ratio"].get("maximum").is_none());
        assert!(s["$defs"]["n"].get("maximum").is_none() && s["$defs"]["n"]["minimum"] == -9_999_999_999_999_999i64);
    }

    #[test]
    fn response_formats_map_to_schemas() {
        assert_eq!(response_format(Some(&json!({"type": "text"}))).unwrap(), None);
        let Some(ConstraintSpec { grammar: Grammar::JsonSchema(s), triggers }) = response_format(Some(&json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}}))).unwrap() else { panic!() };
        assert!(triggers.is_empty());
        assert_eq!(s["properties"]["a"]["type"], "integer");
        assert_eq!(s["x-guidance"]["key_separator"], ": ");
        assert_eq!(
            response_format(Some(&json!({"type": "yaml"}))).unwrap_err().param.as_deref(),
            Some("response_format.type")
        );
        assert!(completion_fields(Some(&json!({})), Some("start: \"a\""), None, None).is_err());
    }

    #[test]
    fn tool_grammar_covers_offered_tools_and_hoists_defs() {
        let tools = [
            json!({"type": "function", "function": {"name": "a", "parameters": {"type": "object", "properties": {"x": {"$ref": "#/$defs/X"}}, "$defs": {"X": {"type": "integer"}}}}}),
            json!({"type": "function", "function": {"name": "b"}}),
        ];
        let offered = Offered { names: vec!["a".into()], choice: ToolChoice::Named("a".into()) };
        let Some(ConstraintSpec { grammar: Grammar::Lark(g), triggers }) =
            tool_calls(&tools, &offered, true, &HERMES).unwrap()
        else {
            panic!()
        };
        assert!(triggers.is_empty());
        assert!(g.starts_with("start: hermes_calls\ncall_body: %json "), "{g}");
        assert!(
            g.contains("\nhermes_calls: hermes_call\nhermes_call: \"<tool_call>\\n\" call_body \"\\n</tool_call>\"\n"),
            "{g}"
        );
        assert!(
            g.contains("\"t0_X\":{\"type\":\"integer\",\"maximum\":9999999999999999,\"minimum\":-9999999999999999}")
                && g.contains("\"$ref\":\"#/$defs/t0_X\"")
                && g.contains("\"arguments\":{\"$ref\":\"#/$defs/t0\"}"),
            "{g}"
        );
        assert!(g.contains("\"const\":\"a\"") && !g.contains("\"const\":\"b\""), "{g}");
        let offered = Offered { names: vec!["a".into(), "b".into()], choice: ToolChoice::Auto };
        let Some(ConstraintSpec { grammar: Grammar::Lark(g), triggers }) =
            tool_calls(&tools, &offered, true, &HERMES).unwrap()
        else {
            panic!()
        };
        assert_eq!(triggers, ["<tool_call>", "\\[TOOL_CALLS\\]", "(?:```(?:json)?[ \\t\\n]*)?(?:\\[[ \\t\\n]*)?\\{[ \\t\\n]*\"name\"[ \\t\\n]*:[ \\t\\n]*(?:\"a\"|\"b\")"]);
        assert!(g.starts_with("start: hermes_calls | mistral_calls | json_calls\n"), "{g}");
        assert!(g.contains("\nhermes_calls: hermes_call (\"\\n\" hermes_call){0,7}\n"), "{g}");
        assert!(g.contains("\nmistral_calls: \"[TOOL_CALLS]\" \"[\" call_body (\", \" call_body){0,7} \"]\"\n"), "{g}");
        assert!(g.contains("\njson_calls: FENCE? (flex_body | \"[\" WS? flex_body (WS? \",\" WS? flex_body){0,7} WS? \"]\") CLOSE?\n"), "{g}");
        // The lenient body takes Llama 3's `parameters` too.
        assert!(g.contains("\"required\":[\"name\",\"parameters\"]"), "{g}");
    }
}
