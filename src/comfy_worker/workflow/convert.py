"""UI-format workflow → API prompt, exactly as ComfyUI's editor builds it (pure).

The editor (``comfyui_frontend_package`` 1.48.7, the one ComfyUI v0.33.0 serves) turns its
graph into the prompt it queues in ``app.graphToPrompt()``: virtual nodes (PrimitiveNode,
Reroute, Note, MarkdownNote, subgraph nodes) are applied or followed and left out, muted
nodes (``mode`` 2) are left out and give nothing, a bypassed node (``mode`` 4) hands each
consumer the input of the same type, a muted or bypassed subgraph node drops its whole
subgraph, subgraphs are flattened with ``"outer:inner"`` ids, and every remaining node
becomes ``{"inputs": {...}, "class_type": ..., "_meta": {"title": ...}}`` with widget
values by name and links as ``[source_id, slot]``. :func:`ui_to_api` reproduces that on
a UI-format document and the backend's ``/object_info``; the loading half lives in
:mod:`comfy_worker.workflow.loader`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from comfy_worker.errors import WorkflowConversionError
from comfy_worker.workflow.graph import (
    MODE_BYPASS,
    MODE_NEVER,
    Graph,
    Node,
    SubgraphNode,
    Widget,
    all_nodes,
    conversion_error,
    is_valid_connection,
    resolve_link,
)
from comfy_worker.workflow.jsvalue import (
    UNDEFINED,
    element_at,
    from_json,
    is_number,
    js_key_order,
    json_type,
    loose_equals,
    parse_int,
    to_json,
    to_string,
)
from comfy_worker.workflow.loader import Loader
from comfy_worker.workflow.prompt_text import apply_text_replacements, process_dynamic_prompt
from comfy_worker.workflow.virtual_nodes import apply_primitive

__all__ = ["is_ui_workflow", "ui_to_api"]


def is_ui_workflow(doc: object) -> bool:
    """True for the editor's "Save" format: an object with a ``nodes`` array (and
    ``links``), as opposed to the API format (``{"id": {"class_type": ...}}``)."""
    if not isinstance(doc, Mapping):
        return False
    nodes = doc.get("nodes")
    if not isinstance(nodes, list):
        return False
    if "links" in doc or "last_node_id" in doc or "version" in doc or "definitions" in doc:
        return True
    # an API prompt never has a top-level "nodes" list of node objects
    return all(isinstance(n, Mapping) and "type" in n for n in nodes)


def ui_to_api(ui: Mapping[str, Any], object_info: Mapping[str, Any], *,
              rng: random.Random | None = None, now: datetime | None = None
              ) -> dict[str, dict[str, Any]]:
    """The API prompt ComfyUI's editor would queue for the UI-format workflow ``ui``.

    ``object_info`` is the backend's ``/object_info`` (the node definitions decide the
    widgets, their order and the sockets). ``rng`` drives dynamic-prompt choices (``{a|b}``
    in a prompt), ``now`` the ``%date:...%`` replacements in ``filename_prefix`` (default:
    local time).

    Raises :class:`~comfy_worker.errors.WorkflowConversionError` naming the node id, its
    type and why when the editor could not build a prompt either (unknown node types, all
    of them at once; a link to a node that does not exist; a circular link ...).
    """
    if not isinstance(ui, Mapping):
        raise WorkflowConversionError(
            f"a UI-format workflow is an object, got {json_type(ui)}",
            hint='pass the JSON the editor saves ({"nodes": [...], "links": [...]})')
    if not isinstance(object_info, Mapping) or not object_info:
        raise WorkflowConversionError(
            "converting a UI-format workflow needs the node definitions (/object_info)",
            hint="pass the /object_info of the ComfyUI that will run the workflow")
    if not isinstance(ui.get("nodes"), list):
        raise WorkflowConversionError(
            f'field "nodes" is {json_type(ui.get("nodes"))}, expected an array',
            hint="pass the JSON the editor saves with Workflow > Save")
    when = now or datetime.now()
    try:
        doc = from_json(dict(ui))
        loader = Loader(object_info, when)
        root = loader.load(doc)
        return _PromptBuilder(root, rng or random.Random(), when, loader).build()
    except RecursionError:
        raise WorkflowConversionError(
            "the workflow nests subgraphs or links too deeply to follow",
            hint="check the workflow for a subgraph that contains itself") from None


# --- ExecutableNodeDTO ----------------------------------------------------------------------


@dataclass
class _Resolved:
    origin_id: str = ""
    origin_slot: Any = None
    widget_value: Any = UNDEFINED
    is_widget: bool = False


class _Dto:
    """One node as the prompt sees it: a flattened id and link resolution across
    reroutes, bypassed nodes and subgraph boundaries (the editor's ExecutableNodeDTO)."""

    def __init__(self, node: Node, path: list[str], by_id: dict[str, _Dto],
                 subgraph_node: SubgraphNode | None) -> None:
        self.node = node
        self.path = list(path)
        self.by_id = by_id
        self.subgraph_node = subgraph_node
        self.graph = node.graph
        self.id = ":".join([*path, node.id])
        self.inputs = [(slot.link, slot.name, slot.type) for slot in node.inputs]

    # errors

    def _error(self, why: str, hint: str | None = None) -> WorkflowConversionError:
        return conversion_error(self.node, why, hint, node_id=self.id)

    def _key(self, kind: str, slot: Any) -> str:
        sub = self.subgraph_node.subgraph.id if self.subgraph_node and \
            self.subgraph_node.subgraph else UNDEFINED
        return f"{to_string(sub)}:{self.node.id}[{kind}]{to_string(slot)}"

    # resolution

    def resolve_input(self, slot: int, visited: set[str] | None = None,
                      type_override: Any = None) -> _Resolved | None:
        visited = set() if visited is None else visited
        key = self._key("I", slot)
        if key in visited:
            raise self._error(f"input {slot} is part of a circular link",
                              hint="remove the loop of links (reroutes or subgraph "
                              "connections that lead back to themselves)")
        visited.add(key)
        entry = element_at(self.inputs, slot, wrap=True)
        if entry is None:
            raise self._error(f"has no input slot {slot}")
        link_id, name, typ = entry
        if link_id is None or link_id is UNDEFINED:
            return None
        link = self.graph.link(link_id)
        if link is None:
            raise self._error(
                f'input "{to_string(name)}" refers to link {to_string(link_id)}, which the '
                "workflow does not have",
                hint="reconnect that input in the editor and save again")
        outer = self.subgraph_node
        if outer is not None and link.origin_is_io:
            outer_slot = element_at(outer.inputs, link.origin_slot, wrap=True)
            if outer_slot is None:
                raise self._error(f'input "{to_string(name)}" comes from subgraph input '
                                  f"{to_string(link.origin_slot)}, which the subgraph node "
                                  "does not have")
            if outer_slot.link is None or outer_slot.link is UNDEFINED:
                key_id = outer_slot.widget_id
                if key_id is None:
                    return None
                state = outer.graph.root.widget_store.get(*key_id)
                return _Resolved(is_widget=True,
                                 widget_value=state.value if state is not None else UNDEFINED)
            outer_link = outer.graph.link(outer_slot.link)
            if outer_link is None:
                raise self._error(f"the subgraph node's input {to_string(outer_slot.name)} "
                                  f"refers to link {to_string(outer_slot.link)}, which the "
                                  "workflow does not have")
            parent = self.by_id.get(":".join(self.path))
            if parent is None:
                raise self._error("its subgraph node is missing")
            return parent.resolve_input(_slot_index(outer_link.target_slot), visited)
        origin = self.graph.node_by_id(link.origin_id)
        if origin is None:
            raise self._error(
                f'input "{to_string(name)}" is linked to node {link.origin_id}, which does '
                "not exist", hint="reconnect that input in the editor")
        origin_dto = self.by_id.get(":".join([*self.path, origin.id]))
        if origin_dto is None:
            raise self._error(f"the node feeding input \"{to_string(name)}\" is missing")
        wanted = typ if type_override is None or type_override is UNDEFINED else type_override
        return origin_dto.resolve_output(link.origin_slot, wanted, visited)

    def resolve_output(self, slot: Any, typ: Any, visited: set[str]) -> _Resolved | None:
        key = self._key("O", slot)
        if key in visited:
            raise self._error(f"output {to_string(slot)} is part of a circular link",
                              hint="remove the loop of links")
        visited.add(key)
        node = self.node
        if _mode_is(node.mode, MODE_NEVER):
            return None
        if _mode_is(node.mode, MODE_BYPASS):
            index = self._bypass_input(slot, typ)
            if index == -1:
                return None
            return self.resolve_input(index, visited)
        if isinstance(node, SubgraphNode):
            return self._subgraph_output(slot, typ, visited)
        if node.virtual:
            index = _slot_index(slot)
            link = node.input_link(index) if isinstance(index, int) and index >= 0 else None
            if link is not None:
                resolved = resolve_link(link, self.graph)
                target = resolved.input_node
                if target is None:
                    raise self._error(f"cannot follow the link into output {to_string(slot)}")
                dto = self.by_id.get(":".join([*self.path, target.id]))
                if dto is None:
                    raise self._error(f"node {target.id} is missing")
                return dto.resolve_input(_slot_index(link.target_slot), visited, typ)
            return None
        return _Resolved(origin_id=self.id, origin_slot=slot)

    def _bypass_input(self, slot: Any, typ: Any) -> int:
        """Which input a bypassed node passes through for output ``slot`` of type ``typ``."""
        inputs = self.inputs
        index = _slot_index(slot)
        out = element_at(self.node.outputs, slot, wrap=False)
        if out is None:
            raise self._error(f"is bypassed but has no output {to_string(slot)}")
        out_type = out.type
        if typ == "*" or typ == "":
            return index if isinstance(index, int) and len(inputs) > index else 0
        own = element_at(inputs, slot, wrap=False)
        if own is not None and is_valid_connection(own[2], out_type) \
                and is_valid_connection(own[2], typ):
            return index
        for i, (_, _, t) in enumerate(inputs):
            if t == typ and type(t) is type(typ):
                return i
        for i, (_, _, t) in enumerate(inputs):
            if is_valid_connection(t, out_type) and is_valid_connection(t, typ):
                return i
        return -1

    def _subgraph_output(self, slot: Any, typ: Any, visited: set[str]) -> _Resolved | None:
        node = self.node
        sub = node.subgraph
        out = element_at(node.outputs, slot, wrap=True)
        if out is None or sub is None:
            raise self._error(f"has no output {to_string(slot)}")
        io = element_at(sub.io_outputs, slot, wrap=False)
        if io is None:
            raise self._error(f"its subgraph has no output {to_string(slot)}")
        links = [link for link in (sub.link(i) for i in io.link_ids) if link is not None]
        if not links:
            return None
        resolved = resolve_link(links[0], sub)
        inner = resolved.output_node
        if inner is None:
            raise self._error(
                f"subgraph output {to_string(io.name)} is not produced by a node inside the "
                "subgraph (it is wired straight from a subgraph input)",
                hint="the editor cannot queue that either; connect the output to a node")
        dto = self.by_id.get(":".join([*self.path, node.id, inner.id]))
        if dto is None:
            raise self._error(f"inner node {inner.id} is missing")
        return dto.resolve_output(links[0].origin_slot, typ, visited)


def _slot_index(value: Any) -> Any:
    if is_number(value) and float(value).is_integer():
        return int(value)
    return value


# --- the prompt ---------------------------------------------------------------------------


class _PromptBuilder:
    def __init__(self, root: Graph, rng: random.Random, now: datetime, loader: Loader) -> None:
        self.root = root
        self.rng = rng
        self.now = now
        self.loader = loader

    def build(self) -> dict[str, dict[str, Any]]:
        order = _execution_order(self.root)
        for node in order:
            for inner in _inner_nodes(node, set()) if isinstance(node, SubgraphNode) \
                    else [node]:
                if inner.kind == "primitive":
                    apply_primitive(inner)
        by_id: dict[str, _Dto] = {}
        for node in order:
            dto = _Dto(node, [], by_id, None)
            by_id[dto.id] = dto
            if _mode_is(node.mode, MODE_NEVER) or _mode_is(node.mode, MODE_BYPASS):
                continue
            if isinstance(node, SubgraphNode):
                for inner in self._subgraph_dtos(node, [], by_id, set(), None):
                    by_id[inner.id] = inner
        self._refuse_missing(by_id)
        output: dict[str, dict[str, Any]] = {}
        for dto in list(by_id.values()):
            node = dto.node
            if node.virtual or _mode_is(node.mode, MODE_NEVER) or _mode_is(node.mode,
                                                                          MODE_BYPASS):
                continue
            inputs: dict[str, Any] = {}
            for widget in node.widgets or []:
                if not _truthy_name(widget.name) or not widget.api:
                    continue
                value = self._serialize_widget(dto, widget)
                inputs[to_string(widget.name)] = _wrap(value, widget)
            for index, (_, name, _) in enumerate(dto.inputs):
                resolved = dto.resolve_input(index)
                if resolved is None:
                    continue
                if resolved.is_widget:
                    value = resolved.widget_value
                    inputs[to_string(name)] = {"__value__": value} if isinstance(value, list) \
                        else value
                    continue
                inputs[to_string(name)] = [resolved.origin_id, parse_int(resolved.origin_slot)]
            output[dto.id] = {"inputs": inputs, "class_type": node.comfy_class,
                              "_meta": {"title": node.title}}
        for entry in output.values():
            inputs = entry["inputs"]
            for name in list(inputs):
                value = inputs[name]
                if isinstance(value, list) and len(value) == 2 and value[0] not in output:
                    del inputs[name]
        return _js_ordered(to_json(output))

    def _refuse_missing(self, by_id: dict[str, _Dto]) -> None:
        """Every node that would run but whose type this ComfyUI lacks, named at once."""
        missing = [dto for dto in by_id.values()
                   if dto.node.kind == "missing" and not _mode_is(dto.node.mode, MODE_NEVER)
                   and not _mode_is(dto.node.mode, MODE_BYPASS)]
        if not missing:
            return
        def name(dto: _Dto) -> str:
            return self.loader.original_types.get(dto.node.type, dto.node.type)

        types: list[str] = []
        for dto in missing:
            if name(dto) not in types:
                types.append(name(dto))
        details = [{"node_id": dto.id, "class_type": name(dto),
                    "message": f'node type "{name(dto)}" is not in this ComfyUI\'s '
                               "/object_info"} for dto in missing]
        if len(missing) == 1:
            message = f'node {missing[0].id} ("{types[0]}"): {details[0]["message"]}'
        else:
            listed = ", ".join(
                f'"{t}" (node {", ".join(d.id for d in missing if name(d) == t)})'
                for t in types)
            message = (f"{len(missing)} nodes have types this ComfyUI's /object_info does "
                       f"not have: {listed}")
        raise WorkflowConversionError(message, hint=_missing_hint(types), details=details)

    # virtual nodes

    def _subgraph_dtos(self, node: SubgraphNode, path: list[str], by_id: dict[str, _Dto],
                       seen: set[int], parent: SubgraphNode | None) -> list[_Dto]:
        """``SubgraphNode.getInnerNodes``."""
        if id(node) in seen:
            raise conversion_error(node, "its subgraph contains itself",
                                   hint="a subgraph cannot be placed inside itself")
        seen = {*seen, id(node)}
        own = _Dto(node, path, by_id, parent)
        by_id[own.id] = own
        inner_path = [*path, node.id]
        sub = node.subgraph
        assert sub is not None
        found: list[_Dto] = []
        for inner in sub.nodes:
            if isinstance(inner, SubgraphNode):
                found.extend(self._subgraph_dtos(inner, inner_path, by_id, seen, node))
            else:
                dto = _Dto(inner, inner_path, by_id, node)
                by_id[dto.id] = dto
                found.append(dto)
        return found

    def _serialize_widget(self, dto: _Dto, widget: Widget) -> Any:
        node = dto.node
        if widget.browser_only:
            raise conversion_error(
                node, f"cannot be converted outside the editor: {widget.browser_only}",
                node_id=dto.id,
                hint="replace it by a LoadImage node (and send the image with the job), or "
                "export the workflow with Export (API) from the editor")
        if widget.serialize_value is not None:
            return widget.serialize_value(widget)
        value = widget.value
        if widget.text_replace:
            if not isinstance(value, str):
                raise conversion_error(node, f'widget "{to_string(widget.name)}" holds '
                                       f"{json_type(value)}, not text",
                                       hint="set filename_prefix to a string", node_id=dto.id)
            return apply_text_replacements(value, all_nodes(self.root), self.now)
        if widget.dynamic_prompts:
            return process_dynamic_prompt(value, self.rng) if isinstance(value, str) else value
        return value


def _truthy_name(name: Any) -> bool:
    return name is not None and name is not UNDEFINED and name != "" and name is not False \
        and not (is_number(name) and name == 0)


def _mode_is(mode: Any, wanted: int) -> bool:
    return is_number(mode) and loose_equals(mode, wanted)


def _wrap(value: Any, widget: Widget) -> Any:
    if not isinstance(value, list):
        return value
    if widget.type == "curve":
        return {"__type__": "CURVE", "__value__": value}
    return {"__value__": value}


def _missing_hint(types: list[str]) -> str:
    hints = []
    if any(t in ("SetNode", "GetNode") for t in types):
        hints.append("Set/Get nodes come from a custom node pack (KJNodes) whose editor "
                     "extension wires them; replace them by direct links, or export the "
                     "workflow with Export (API) from an editor that has the pack")
    if any(t.startswith(("workflow>", "workflow/")) for t in types):
        hints.append("a legacy group node: open the workflow in the editor, convert the "
                     "group node to a subgraph and save again")
    it = "it" if len(types) == 1 else "them"
    hints.append(f"install the custom nodes that provide {it} in the image, or pass the "
                 "/object_info of the ComfyUI that will run the workflow")
    return "; ".join(hints)


def _inner_nodes(node: Node, seen: set[int]) -> Iterator[Node]:
    if id(node) in seen:
        raise conversion_error(node, "its subgraph contains itself",
                               hint="a subgraph cannot be placed inside itself")
    seen = {*seen, id(node)}
    sub = node.subgraph
    if sub is None:
        return
    for inner in sub.nodes:
        if isinstance(inner, SubgraphNode):
            yield from _inner_nodes(inner, seen)
        else:
            yield inner


def _execution_order(graph: Graph) -> list[Node]:
    """``LGraph.computeExecutionOrder``."""
    ordered: list[Node] = []
    queue: list[Node] = []
    remaining: dict[str, Node] = {}
    pending: dict[str, float] = {}
    done_links: set[Any] = set()
    for node in graph.nodes:
        key = node.id
        remaining[key] = node
        count = sum(1 for slot in node.inputs if slot.link is not None
                    and slot.link is not UNDEFINED)
        if count == 0:
            queue.append(node)
        else:
            pending[key] = count
    while queue:
        node = queue.pop(0)
        ordered.append(node)
        remaining.pop(node.id, None)
        for out in node.outputs:
            for link_id in out.links or []:
                link = graph.link(link_id)
                if link is None or link.id in done_links:
                    continue
                target = graph.node_by_id(link.target_id)
                if target is None:
                    done_links.add(link.id)
                    continue
                done_links.add(link.id)
                key = target.id
                if key in pending:
                    pending[key] -= 1
                    if pending[key] == 0:
                        queue.append(target)
                else:
                    pending[key] = float("nan")
    ordered.extend(remaining[k] for k in js_key_order(list(remaining)))
    return ordered


def _js_ordered(prompt: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in js_key_order(list(prompt)):
        entry = prompt[key]
        if isinstance(entry, dict) and isinstance(entry.get("inputs"), dict):
            inputs = entry["inputs"]
            entry = {**entry, "inputs": {k: inputs[k] for k in js_key_order(list(inputs))}}
        out[key] = entry
    return out
