//! Two opt-in hints for small models using tools in `auto` mode, each in the language of the
//! user's last message (small models follow instructions in the conversation's language
//! better): `tool_system_hint` says how to use the tools (arguments only from the user or
//! earlier results: they invent ids they were never given), merged into the first system
//! message or added as one; `tool_result_hint` follows a last message that is a tool's result
//! and asks for the answer from it — at the end of the prompt, so the prefix cache still
//! serves everything before it. `validate::chat` applies them; scripts/eval_agents.py
//! measures them (both help Qwen2.5-Coder-1.5B and hurt the 0.5B, hence opt-in).

use serde_json::{json, Value};

use crate::openai::{ChatMessage, MessageContent, Role};

/// Which hints a request asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hints {
    pub system: bool,
    pub result: bool,
}

impl Hints {
    /// Adds the asked-for hints to `rendered`, the template's messages of `msgs`.
    pub fn apply(self, msgs: &[ChatMessage], rendered: &mut Vec<Value>) {
        let lang = language_of(msgs) as usize;
        if self.system {
            let h = SYSTEM[lang];
            match rendered.first_mut().and_then(Value::as_object_mut).filter(|m| m["role"] == "system") {
                Some(first) => {
                    let content = format!("{}\n\n{h}", first["content"].as_str().unwrap_or(""));
                    first.insert("content".into(), json!(content));
                }
                None => rendered.insert(0, json!({"role": "system", "content": h})),
            }
        }
        if self.result && msgs.last().is_some_and(|m| m.role == Role::Tool) {
            rendered.push(json!({"role": "system", "content": RESULT[lang]}));
        }
    }
}

/// Index: `Language`.
const SYSTEM: [&str; 4] = [
    "Use a tool only for information you do not have. Take every argument from the user's message or from an earlier tool result; never invent ids or names. When the results answer the question, reply to the user.",
    "Chỉ dùng công cụ khi bạn chưa có thông tin. Lấy mọi tham số từ tin nhắn của người dùng hoặc từ kết quả công cụ trước đó; không tự bịa mã hay tên. Khi kết quả đã trả lời câu hỏi, hãy trả lời người dùng.",
    "Используй инструмент, только если информации у тебя нет. Бери каждый аргумент из сообщения пользователя или из прежнего результата инструмента; не выдумывай идентификаторы и имена. Когда результаты отвечают на вопрос, ответь пользователю.",
    "Usa una herramienta solo para información que no tienes. Toma cada argumento del mensaje del usuario o de un resultado anterior; nunca inventes identificadores ni nombres. Cuando los resultados respondan la pregunta, responde al usuario.",
];

/// Index: `Language`.
const RESULT: [&str; 4] = [
    "The tool results above are correct and final. If they answer the user's question, reply to the user now with the answer; call a tool only for information you do not have yet.",
    "Kết quả công cụ ở trên là chính xác. Nếu chúng đã trả lời câu hỏi của người dùng, hãy trả lời người dùng ngay; chỉ gọi công cụ khi còn thiếu thông tin.",
    "Результаты инструментов выше верны. Если они отвечают на вопрос пользователя, ответь пользователю сейчас; вызывай инструмент, только если информации ещё не хватает.",
    "Los resultados de las herramientas de arriba son correctos. Si responden a la pregunta del usuario, respóndele ahora; llama a una herramienta solo si aún falta información.",
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Language {
    English,
    Vietnamese,
    Russian,
    Spanish,
}

/// The language of the user's last message (English when there is no text to tell by).
fn language_of(msgs: &[ChatMessage]) -> Language {
    let question = msgs.iter().rev().find(|m| m.role == Role::User).and_then(|m| match &m.content {
        Some(MessageContent::Text(t)) => Some(t.as_str()),
        _ => None,
    });
    question.map(language).unwrap_or(Language::English)
}

/// A guess from the script and the letters only these languages use.
fn language(text: &str) -> Language {
    let has = |set: &str| text.chars().any(|c| set.contains(c.to_lowercase().next().unwrap_or(c)));
    if text.chars().any(|c| ('\u{0400}'..='\u{04ff}').contains(&c)) {
        Language::Russian
    } else if has("ăâđêôơưạảấầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộớờởỡợụủứừửữựỳỵỷỹ")
    {
        Language::Vietnamese
    } else if has("ñ¿¡") || has("áéíóú") {
        Language::Spanish
    } else {
        Language::English
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(v: Value) -> ChatMessage {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn hints_are_in_the_user_question_s_language_and_where_they_belong() {
        assert_eq!(language("What is the weather?"), Language::English);
        assert_eq!(language("Thời tiết ở Huế thế nào?"), Language::Vietnamese);
        assert_eq!(language("Какая погода?"), Language::Russian);
        assert_eq!(language("¿Qué tiempo hace?"), Language::Spanish);
        let user = msg(json!({"role": "user", "content": "Какая погода в Казани?"}));
        let tool = msg(json!({"role": "tool", "tool_call_id": "a", "content": "{}"}));
        let both = Hints { system: true, result: true };
        // No system message: one is added first; a tool result last: the result hint after it.
        let mut rendered = vec![json!({"role": "user"}), json!({"role": "tool"})];
        both.apply(&[user.clone(), tool], &mut rendered);
        assert_eq!(rendered.len(), 4);
        assert_eq!(rendered[0]["content"], SYSTEM[2]);
        assert!(rendered[3]["content"].as_str().unwrap().starts_with("Результаты"));
        // A system message gets the hint appended; no tool result, no result hint.
        let mut rendered = vec![json!({"role": "system", "content": "Be brief."}), json!({"role": "user"})];
        both.apply(std::slice::from_ref(&user), &mut rendered);
        assert_eq!(rendered.len(), 2);
        assert_eq!(rendered[0]["content"], format!("Be brief.\n\n{}", SYSTEM[2]));
        let mut rendered = vec![json!({"role": "user"})];
        Hints::default().apply(&[user], &mut rendered);
        assert_eq!(rendered.len(), 1);
    }
}
