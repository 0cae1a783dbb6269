// Shows the text report of the pack's Diversity nodes on the node itself, under its widgets.
// The Python node returns it as `ui.text`; ComfyUI's frontend only draws that for its own text nodes.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const REPORT_NODES = new Set(["ParticleRepulsionDiversityMetric", "ParticleRepulsionDiversityCompare"]);
const REPORT_WIDGET = "report_text";

function reportWidget(node) {
  const existing = node.widgets?.find((widget) => widget.name === REPORT_WIDGET);
  if (existing) return existing;
  const widget = ComfyWidgets.STRING(node, REPORT_WIDGET, ["STRING", { multiline: true }], app).widget;
  widget.inputEl.readOnly = true;
  widget.inputEl.style.fontFamily = "monospace";
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
