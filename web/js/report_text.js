// Shows the text report of the pack's Diversity nodes on the node itself, under its widgets.
// The Python node returns it as `ui.text`; ComfyUI's frontend only draws that for its own text nodes.
// Public extension API only: scripts/app.js, app.registerExtension, the node's onExecuted and addDOMWidget
// (the frontend's own multiline text widget is a textarea in a DOM widget too).
import { app } from "../../scripts/app.js";

const REPORT_NODES = new Set(["ParticleRepulsionDiversityMetric", "ParticleRepulsionDiversityCompare"]);
const REPORT_WIDGET = "report_text";

function reportTextArea() {
  const text = document.createElement("textarea");
  text.readOnly = true;
  text.spellcheck = false;
  Object.assign(text.style, { fontFamily: "monospace", fontSize: "11px", width: "100%", resize: "none" });
  return text;
}

function reportWidget(node) {
  const existing = node.widgets?.find((widget) => widget.name === REPORT_WIDGET);
  if (existing) return existing;
  const text = reportTextArea();
  const widget = node.addDOMWidget(REPORT_WIDGET, "particle_repulsion_report", text, {
    getValue: () => text.value,
    setValue: (value) => { text.value = value; },
  });
  widget.serialize = false; // a view of the last run, not an input: keep saved widgets_values unchanged
  return widget;
}

app.registerExtension({
  name: "ParticleRepulsion.ReportText",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!REPORT_NODES.has(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      if (!output?.text) return;
      reportWidget(this).value = output.text.join("\n");
      this.setDirtyCanvas(true, true);
    };
  },
});
