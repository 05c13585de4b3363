//! The tool-result hint: when a conversation's last message is a tool's result and tools are
//! offered in `auto` mode, a short system message after it tells a small model to answer from
//! the results unless it still lacks something — in the language of the user's last message,
//! since small models follow instructions in the conversation's language better. It sits at
//! the end of the prompt, so the prefix cache still serves everything before it. Requested
//! with the `tool_result_hint` extension (validate.rs adds it; the eval in
//! scripts/eval_agents.py measures it).

use crate::openai::{ChatMessage, MessageContent, Role};

/// The language of the user's last message (English when there is no text to tell by).
fn language_of(msgs: &[ChatMessage]) -> Language {
    let question = msgs.iter().rev().find(|m| m.role == Role::User).and_then(|m| match &m.content {
        Some(MessageContent::Text(t)) => Some(t.as_str()),
        _ => None,
    });
    question.map(language).unwrap_or(Language::English)
}

/// How to use the tools, for the start of a conversation that offers them (the
/// `tool_system_hint` extension): small models invent ids they were never given.
pub fn system_hint(msgs: &[ChatMessage]) -> &'static str {
    match language_of(msgs) {
        Language::English => {
            "Use a tool only for information you do not have. Take every argument from the user's message or from an earlier tool result; never invent ids or names. When the results answer the question, reply to the user."
        }
        Language::Vietnamese => {
            "Chỉ dùng công cụ khi bạn chưa có thông tin. Lấy mọi tham số từ tin nhắn của người dùng hoặc từ kết quả công cụ trước đó; không tự bịa mã hay tên. Khi kết quả đã trả lời câu hỏi, hãy trả lời người dùng."
        }
        Language::Russian => {
            "Используй инструмент, только если информации у тебя нет. Бери каждый аргумент из сообщения пользователя или из прежнего результата инструмента; не выдумывай идентификаторы и имена. Когда результаты отвечают на вопрос, ответь пользователю."
        }
        Language::Spanish => {
            "Usa una herramienta solo para información que no tienes. Toma cada argumento del mensaje del usuario o de un resultado anterior; nunca inventes identificadores ni nombres. Cuando los resultados respondan la pregunta, responde al usuario."
        }
    }
}

/// The hint for `msgs`, or None when the last message is not a tool result.
pub fn hint(msgs: &[ChatMessage]) -> Option<&'static str> {
    if msgs.last()?.role != Role::Tool {
        return None;
    }
    Some(match language_of(msgs) {
        Language::English => {
            "The tool results above are correct and final. If they answer the user's question, reply to the user now with the answer; call a tool only for information you do not have yet."
        }
        Language::Vietnamese => {
            "Kết quả công cụ ở trên là chính xác. Nếu chúng đã trả lời câu hỏi của người dùng, hãy trả lời người dùng ngay; chỉ gọi công cụ khi còn thiếu thông tin."
        }
        Language::Russian => {
            "Результаты инструментов выше верны. Если они отвечают на вопрос пользователя, ответь пользователю сейчас; вызывай инструмент, только если информации ещё не хватает."
        }
        Language::Spanish => {
            "Los resultados de las herramientas de arriba son correctos. Si responden a la pregunta del usuario, respóndele ahora; llama a una herramienta solo si aún falta información."
        }
    })
}

#[derive(Debug, PartialEq)]
enum Language {
    English,
    Vietnamese,
    Russian,
    Spanish,
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

    #[test]
    fn the_language_is_the_user_question_s() {
        assert_eq!(language("What is the weather?"), Language::English);
        assert_eq!(language("Thời tiết ở Huế thế nào?"), Language::Vietnamese);
        assert_eq!(language("Какая погода?"), Language::Russian);
        assert_eq!(language("¿Qué tiempo hace?"), Language::Spanish);
        let msg = |v: serde_json::Value| serde_json::from_value::<ChatMessage>(v).unwrap();
        let user = msg(serde_json::json!({"role": "user", "content": "Какая погода в Казани?"}));
        let tool = msg(serde_json::json!({"role": "tool", "tool_call_id": "a", "content": "{}"}));
        assert!(hint(&[user.clone(), tool]).unwrap().starts_with("Результаты"));
        assert_eq!(hint(&[user]), None);
    }
}
