"""The Diversity nodes' report on a shared server: labels stay one short line, and HTML in them reaches the
web UI as text (the report widget is a textarea whose value is set, never parsed as HTML)."""
from graphs import LATENT, Graph
from hardening_common import assert_still_serves

from test_workflows import page  # noqa: F401  (the real web UI, as the workflow tests drive it)

HTML_LABEL = '<img src=x onerror="window.hardeningInjected = true">'


def compare_prompt(checkpoint: str, label_a: str, label_b: str = "with") -> dict:
    """Diversity Compare on two empty 2-image latents (no model runs), its plot 256 x 164 pixels."""
    graph = Graph(checkpoint, batch_size=2, width=32, height=32)
    graph.add("compare", "ParticleRepulsionDiversityCompare", features="latent", aspect="whole", prompt_groups=1,
              label_a=label_a, label_b=label_b, plot_width=256, plot_height=164, latent_a=[LATENT, 0],
              latent_b=[LATENT, 0])
    return {node_id: node for node_id, node in graph.nodes.items() if node_id in (LATENT, "compare")}


def test_a_label_that_would_break_the_report_is_refused_naming_the_input(server, tiny_checkpoint):
    error = server.run_expecting_error(compare_prompt(tiny_checkpoint, "two\nlines"))
    assert "The label_a 'two\\nlines' holds control or format characters" in error
    error = server.run_expecting_error(compare_prompt(tiny_checkpoint, "without", "x" * 101))
    assert "The label_b has 101 characters; at most 100 are allowed." in error
    assert_still_serves(server, tiny_checkpoint)


def test_html_in_a_label_shows_as_text_in_the_web_ui(page, server, tiny_checkpoint):  # noqa: F811
    page.evaluate("async (prompt) => { await window.app.loadApiJson(prompt, 'hardening'); }",
                  compare_prompt(tiny_checkpoint, HTML_LABEL))
    page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
    report = page.wait_for_function("""() => {
        const node = window.app.graph._nodes.find((n) => n.type === "ParticleRepulsionDiversityCompare");
        return node?.widgets?.find((w) => w.name === "report_text")?.value || null;
    }""", timeout=120_000).json_value()
    page.wait_for_timeout(500)  # an injected image would fail to load and run its handler by now
    assert HTML_LABEL in report
    assert page.evaluate("() => window.hardeningInjected === undefined")
    assert page.locator("img[src='x']").count() == 0
    assert_still_serves(server, tiny_checkpoint)
