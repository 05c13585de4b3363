"""/v1/embeddings through the official openai SDK (which asks for base64 and decodes it) on
all-MiniLM-L6-v2, served beside the generation models."""

import math

import httpx
import openai
import pytest

from conftest import API_KEY, MINILM, QWEN


def cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_embeddings_rank_by_meaning(client):
    r = client.embeddings.create(model=MINILM, input=["A cat sits on the mat.", "A kitten rests on a rug.", "Stock prices fell sharply."])
    assert r.object == "list" and r.model == MINILM and len(r.data) == 3
    a, b, c = (d.embedding for d in r.data)
    assert len(a) == 384
    assert cos(a, b) > cos(a, c) + 0.2
    assert r.usage.prompt_tokens == r.usage.total_tokens > 0


def test_float_and_base64_agree(client, server):
    sdk = client.embeddings.create(model=MINILM, input="hello world").data[0].embedding
    raw = httpx.post(server.base + "/v1/embeddings", json={"model": MINILM, "input": "hello world", "encoding_format": "float"},
                     headers={"Authorization": f"Bearer {API_KEY}"}).json()
    assert raw["data"][0]["embedding"] == pytest.approx(sdk, abs=1e-7)


def test_embedding_errors(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=MINILM, input="x", dimensions=64)
    assert e.value.body["param"] == "dimensions"
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=MINILM, input="word " * 1000)
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=QWEN, input="x")
    assert client.embeddings.create(model=MINILM, input="word " * 1000, extra_body={"truncate": True}).usage.prompt_tokens == 512


def test_models_mark_the_embedding_model(client):
    caps = {m.id: m.model_extra.get("capabilities") for m in client.models.list().data}
    assert caps[MINILM] == ["embeddings"] and caps[QWEN] == ["chat", "completion"]
