"""Prompts in Chinese, Arabic and German through the engine and the API, spans right for non-Latin text.

The released model was trained on English; these tests prove the plumbing
(tokenizer, processor, parsing, spans, the HTTP API) carries other scripts
intact, not that the model answers them well. The tiny checkpoint's tokenizer
can spell :data:`kosmos_demo.tiny.MULTILINGUAL_SAMPLE`'s characters.
"""

import pytest
from forcing import forced_describe
from PIL import Image

from kosmos_demo.settings import DecodingSettings
from kosmos_demo.tasks import Request, Task

QUESTIONS = {"chinese": "红色的圆形在哪里？", "arabic": "أين الدائرة الحمراء؟", "german": "Wo ist der grüne Kreis?"}
PHRASES = {"chinese": "红色的圆形", "arabic": "الدائرة الحمراء", "german": "der grüne Kreis"}


@pytest.fixture(scope="module")
def image():
    return Image.new("RGB", (320, 240), "white")


@pytest.mark.parametrize("language", QUESTIONS)
def test_a_question_in_another_script_reaches_the_model_and_the_caption_intact(tiny_engine, image, language):
    question = QUESTIONS[language]
    request = Request(Task.VQA, text=question, decoding=DecodingSettings(max_new_tokens=4))
    prepared = tiny_engine.preprocess([image], [request])
    ids = prepared.inputs["input_ids"][0].tolist()
    assert tiny_engine.processor.tokenizer.unk_token_id not in ids
    result, _ = forced_describe(tiny_engine, image, request, text=" answer.")
    assert question in result.prompt and result.text.startswith(f"Question: {question} Answer:")


@pytest.mark.parametrize("language", PHRASES)
def test_grounded_phrases_in_another_script_keep_their_spans(tiny_engine, image, language):
    phrase = PHRASES[language]
    continuation = f"<phrase> {phrase}</phrase><object><patch_index_0010><patch_index_0500></object> ."
    request = Request(Task.BRIEF, decoding=DecodingSettings(max_new_tokens=60), heatmaps=True)
    result, _ = forced_describe(tiny_engine, image, request, text=continuation)
    (entity,) = result.entities
    assert entity.phrase == phrase and result.text[slice(*entity.span)] == phrase
    assert entity.complete and len(entity.boxes) == 1
    pieces = [t.text for t in result.tokens if t.generated and t.kind == "text"]
    assert phrase.replace(" ", "") in "".join(pieces).replace(" ", "")  # every token decoded, none lost


@pytest.mark.parametrize("language", QUESTIONS)
def test_the_api_answers_a_question_in_another_script(app_server, language):
    from gradio_client import Client, handle_file

    from kosmos_demo.checkpoints import ASSETS

    client = Client(app_server.url, verbose=False)
    _, caption, record = client.predict(image=handle_file(str(ASSETS / "toy-examples" / "red-circle.png")),
                                        task="vqa", text=QUESTIONS[language], max_new_tokens=3, api_name="/describe")
    assert QUESTIONS[language] in record["prompt"] and caption.startswith(f"Question: {QUESTIONS[language]}")
