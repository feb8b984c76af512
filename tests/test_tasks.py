import pytest

from kosmos_demo.tasks import MAX_TEXT_CHARS, PromptError, Request, Task, build_prompt, parse_box, validate_box

SIZE = (640, 480)


@pytest.mark.parametrize(
    "request_,prompt",
    [
        (Request(Task.BRIEF), "<grounding>An image of"),
        (Request(Task.DETAILED), "<grounding>Describe this image in detail:"),
        (Request(Task.PHRASE, text="a snowman next to a fire"), "<grounding><phrase> a snowman next to a fire</phrase>"),
        (Request(Task.VQA, text="What is special about this image?"),
         "<grounding> Question: What is special about this image? Answer:"),
        (Request(Task.REGION, box=(250, 22, 630, 398)),
         "<grounding><phrase> It</phrase><object><patch_index_0044><patch_index_0863></object> is"),
        (Request(Task.REGION_VQA, text="Where is [the fire] next to?", box=(110, 7, 310, 427)),
         "<grounding> Question: Where is<phrase> the fire</phrase><object><patch_index_0005><patch_index_0911></object>"
         " next to? Answer:"),
        (Request(Task.CUSTOM, text="An image of"), "<grounding>An image of"),
        (Request(Task.CUSTOM, text="An image of", grounding=False), "An image of"),
        (Request(Task.CUSTOM, text="<grounding><phrase> It</phrase><object><patch_index_0044><patch_index_0863></object> is"),
         "<grounding><phrase> It</phrase><object><patch_index_0044><patch_index_0863></object> is"),
    ],
)
def test_prompts_are_the_model_cards(request_, prompt):
    assert build_prompt(request_, SIZE) == prompt


def test_region_box_uses_original_pixels_of_non_square_image():
    # the same relative box on a 1000x200 image names the same cells
    prompt = build_prompt(Request(Task.REGION, box=(390.625, 9.375, 984.375, 165.625)), (1000, 200))
    assert "<patch_index_0044><patch_index_0863>" in prompt


@pytest.mark.parametrize("task", [Task.PHRASE, Task.VQA, Task.REGION_VQA, Task.CUSTOM])
@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_missing_text_is_refused(task, text):
    with pytest.raises(PromptError, match="needs text"):
        build_prompt(Request(task, text=text, box=(0, 0, 10, 10)), SIZE)


def test_long_text_refused_with_limit():
    with pytest.raises(PromptError, match=str(MAX_TEXT_CHARS)):
        build_prompt(Request(Task.VQA, text="why " * 5000), SIZE)


@pytest.mark.parametrize("typed", ["</image>", "<image>", "<patch_index_0001>", "<phrase>", "</s>", "<grounding>"])
def test_control_tokens_refused_outside_custom(typed):
    with pytest.raises(PromptError, match="control token"):
        build_prompt(Request(Task.VQA, text=f"What is {typed} here?"), SIZE)


@pytest.mark.parametrize(
    "text,match",
    [("</image> hi", "only the processor"), ("<patch_index_9999>", "0000 to 1023"), ("<phrase> a dog", "not balanced"),
     ("a</object>", "not balanced")],
)
def test_custom_prompt_markup_checked(text, match):
    with pytest.raises(PromptError, match=match):
        build_prompt(Request(Task.CUSTOM, text=text), SIZE)


def test_unicode_and_html_text_pass_through():
    text = "What does <b>this</b> 🙂 say? これは何 ما هذا"
    assert text in build_prompt(Request(Task.VQA, text=text), SIZE)


@pytest.mark.parametrize("task", [Task.REGION, Task.REGION_VQA])
def test_region_needs_box(task):
    with pytest.raises(PromptError, match="needs a box"):
        build_prompt(Request(task, text="What is [it]?"), SIZE)


def test_region_question_needs_brackets():
    with pytest.raises(PromptError, match="brackets"):
        build_prompt(Request(Task.REGION_VQA, text="What is it?", box=(0, 0, 10, 10)), SIZE)


@pytest.mark.parametrize("box", [(700, 500, 900, 900), (10, 10, 10, 50), ("a", 1, 2, 3), (1, 2, 3), (0, 0, float("nan"), 4)])
def test_bad_boxes_refused(box):
    with pytest.raises(PromptError, match="box"):
        validate_box(box, SIZE)


def test_box_is_sorted_and_clipped():
    assert validate_box((630, 400, -5, 10), SIZE) == (0.0, 10.0, 630.0, 400.0)
    assert validate_box((600, 400, 900, 900), SIZE) == (600.0, 400.0, 640.0, 480.0)


def test_parse_box():
    assert parse_box(" 1,2 , 3 4") == (1.0, 2.0, 3.0, 4.0)
    with pytest.raises(PromptError):
        parse_box("1,2,3")
    with pytest.raises(PromptError):
        parse_box("1,2,x,4")


def test_unknown_task():
    with pytest.raises(PromptError, match="Unknown task"):
        Request(task="poem")


@pytest.mark.parametrize(
    "make",
    [lambda: parse_box("x" * 100_000), lambda: parse_box("1,2,x" + "9" * 100_000),
     lambda: validate_box(["x" * 100_000] * 4, SIZE), lambda: validate_box((1.0,) * 50_000, SIZE),
     lambda: Request(task="x" * 100_000),
     lambda: build_prompt(Request(Task.CUSTOM, text="<patch_index_" + "9" * 900 + ">"), SIZE),
     lambda: build_prompt(Request(Task.VQA, text="<patch_index_" + "9" * 900 + ">"), SIZE)],
    ids=["box text", "box digits", "box strings", "box of 50000 numbers", "task", "custom location", "question"],
)
def test_a_long_value_is_quoted_short(make):
    with pytest.raises(PromptError) as caught:
        make()
    message = str(caught.value)
    assert len(message) < 600 and "9" * 100 not in message and "x" * 100 not in message


@pytest.mark.parametrize("task", [Task.PHRASE, Task.VQA, Task.CUSTOM, Task.REGION_VQA])
@pytest.mark.parametrize("text,position", [("what \ud800 is [it]", 5), ("[a] \udcff", 4), ("\udfff[x]", 0)])
def test_text_that_is_not_valid_unicode_is_refused(task, text, position):
    with pytest.raises(PromptError, match=rf"not valid Unicode \(at position {position}\)") as caught:
        build_prompt(Request(task, text=text, box=(0, 0, 10, 10)), SIZE)
    str(caught.value).encode("utf-8")  # the message itself is valid
