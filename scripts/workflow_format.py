"""Write ComfyUI UI-format workflows (what users drag in) from a compact description.

A workflow is described as `WorkflowNode`s that name their widget values and their linked inputs by
name; `to_ui_format` lays them out the way the web UI saves them (positional `widgets_values`, links as
6-tuples), using the running host's `/object_info` for input order, widget kinds and slot types.
"""
from __future__ import annotations

from dataclasses import dataclass, field

NOTE_TYPE = "Note"
NOTE_COLOURS = {"color": "#432", "bgcolor": "#653"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
NODE_WIDTH = 320


@dataclass
class WorkflowNode:
    """One node: `links` maps an input name to (source node key, output index)."""

    key: str
    class_type: str
    pos: tuple[float, float]
    widgets: dict = field(default_factory=dict)
    links: dict[str, tuple[str, int]] = field(default_factory=dict)
    title: str | None = None
    size: tuple[float, float] | None = None


def note(key: str, pos: tuple[float, float], text: str, size=(NODE_WIDTH, 200)) -> WorkflowNode:
    return WorkflowNode(key, NOTE_TYPE, pos, widgets={"text": text}, size=size)


def ordered_inputs(info: dict) -> list[tuple[str, tuple]]:
    """(name, spec) of a node class's inputs, required first, in declaration order."""
    inputs = info["input"]
    return [*inputs.get("required", {}).items(), *inputs.get("optional", {}).items()]


def is_widget(spec: tuple) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def has_control_widget(spec: tuple) -> bool:
    """INT widgets such as seeds get an extra 'control after generate' value in widgets_values."""
    options = spec[1] if len(spec) > 1 else {}
    return bool(options.get("control_after_generate"))


def widget_values(node: WorkflowNode, info: dict) -> list:
    """Positional widgets_values, with defaults for widgets the description leaves out."""
    values = []
    for name, spec in ordered_inputs(info):
        if not is_widget(spec) or name in node.links:
            continue
        options = spec[1] if len(spec) > 1 else {}
        default = spec[0][0] if isinstance(spec[0], list) and spec[0] else options.get("default")
        values.append(node.widgets.get(name, default))
        if has_control_widget(spec):
            values.append("fixed")
    unknown = set(node.widgets) - {name for name, _ in ordered_inputs(info)}
    if unknown:
        raise ValueError(f"{node.class_type} has no inputs named {sorted(unknown)}")
    return values


@dataclass(frozen=True)
class Link:
    link_id: int
    source: str
    source_slot: int
    target: str
    target_slot: int
    kind: str


def socket_inputs(node: WorkflowNode, info: dict) -> list[dict]:
    """The node's input sockets: every non-widget input, plus widgets that are driven by a link."""
    sockets = []
    for name, spec in ordered_inputs(info):
        if is_widget(spec) and name not in node.links:
            continue
        socket = {"name": name, "type": spec[0] if isinstance(spec[0], str) else "COMBO", "link": None}
        if is_widget(spec):
            socket["widget"] = {"name": name}
        sockets.append(socket)
    return sockets


def to_ui_format(nodes: list[WorkflowNode], object_info: dict) -> dict:
    """The workflow as the web UI saves it (format version 0.4)."""
    ids = {node.key: index + 1 for index, node in enumerate(nodes)}
    if len(ids) != len(nodes):
        raise ValueError("two workflow nodes share a key")
    classes = {node.key: node.class_type for node in nodes}
    sockets = {node.key: socket_inputs(node, object_info[node.class_type])
               for node in nodes if node.class_type != NOTE_TYPE}
    links = []
    for node in nodes:
        for input_name, (source, slot) in node.links.items():
            target_slot = next(i for i, socket in enumerate(sockets[node.key]) if socket["name"] == input_name)
            link = Link(len(links) + 1, source, slot, node.key, target_slot,
                        object_info[classes[source]]["output"][slot])
            sockets[node.key][target_slot]["link"] = link.link_id
            links.append(link)
    ui_nodes = [note_entry(node, ids[node.key], order) if node.class_type == NOTE_TYPE
                else node_entry(node, ids[node.key], order, object_info[node.class_type], sockets[node.key], links)
                for order, node in enumerate(nodes)]
    return {"last_node_id": len(nodes), "last_link_id": len(links), "nodes": ui_nodes,
            "links": [[link.link_id, ids[link.source], link.source_slot, ids[link.target], link.target_slot, link.kind]
                      for link in links],
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}


def note_entry(node: WorkflowNode, node_id: int, order: int) -> dict:
    return {"id": node_id, "type": NOTE_TYPE, "pos": list(node.pos), "size": list(node.size or (NODE_WIDTH, 200)),
            "flags": {}, "order": order, "mode": 0, "inputs": [], "outputs": [], "properties": {},
            "widgets_values": [node.widgets["text"]], **NOTE_COLOURS}


def node_entry(node: WorkflowNode, node_id: int, order: int, info: dict, sockets: list[dict], links: list[Link]) -> dict:
    outputs = [{"name": name, "type": kind, "slot_index": slot,
                "links": [link.link_id for link in links if link.source == node.key and link.source_slot == slot]}
               for slot, (name, kind) in enumerate(zip(info["output_name"], info["output"]))]
    widget_count = sum(is_widget(spec) for _, spec in ordered_inputs(info))
    height = 60 + 26 * (len(sockets) + len(outputs) + widget_count)
    entry = {"id": node_id, "type": node.class_type, "pos": list(node.pos), "size": list(node.size or (NODE_WIDTH, height)),
             "flags": {}, "order": order, "mode": 0, "inputs": sockets, "outputs": outputs,
             "properties": {"Node name for S&R": node.class_type}, "widgets_values": widget_values(node, info)}
    if node.title:
        entry["title"] = node.title
    return entry
