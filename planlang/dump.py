"""Stable dumps of a plan graph (raw or after any pass): text, Graphviz dot, JSON."""
from __future__ import annotations

import json

import networkx as nx

from planlang import ast
from planlang.declarations import declaration_of

_SKIP = {"decl", "span", "expr", "unresolved", "ir", "kind", "when", "sense"}


def _order(graph: nx.DiGraph) -> list[str]:
    return sorted(graph.nodes, key=lambda n: (graph.nodes[n]["span"].line, graph.nodes[n]["span"].col, n))


def node_record(graph: nx.DiGraph, node: str) -> dict:
    """A JSON-serializable view of one node: kind, name, shape, span, expression text, annotations."""
    data = graph.nodes[node]
    record = {"id": node, "kind": data["kind"].value, "name": data.get("name"),
              "span": str(data["span"])}
    if data.get("shape") is not None:
        record["shape"] = list(data["shape"])
    decl = data.get("decl")
    text = _decl_text(decl)
    if text:
        record["expr"] = text
    if isinstance(decl, ast.VarDecl):
        record.update({m: True for m in ("positive", "psd") if getattr(decl, m)})
        if decl.bounds is not None:
            record["bounds"] = [ast.to_text(b) for b in decl.bounds]
    if "ir" in data:
        record["typed"] = data["ir"].as_text()
    for key, value in data.items():
        if key in _SKIP or key in record or value is None:
            continue
        record[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return record


def _decl_text(decl) -> str:
    return "" if decl is None else declaration_of(decl).text(decl)


def to_dict(graph: nx.DiGraph) -> dict:
    nodes = [node_record(graph, n) for n in _order(graph)]
    edges = sorted(({"from": u, "to": v, "uses": len(d["spans"])} for u, v, d in graph.edges(data=True)),
                   key=lambda e: (e["from"], e["to"]))
    return {"plan": graph.graph.get("name"), "nodes": nodes, "edges": edges}


def to_json(graph: nx.DiGraph) -> str:
    return json.dumps(to_dict(graph), indent=2)


def to_text(graph: nx.DiGraph) -> str:
    lines = [f"plan {graph.graph.get('name') or '<unnamed>'}: {graph.number_of_nodes()} nodes, "
             f"{graph.number_of_edges()} edges"]
    for node in _order(graph):
        rec = node_record(graph, node)
        shape = f"[{', '.join(map(str, rec['shape']))}]" if rec.get("shape") else ""
        body = rec.get("typed") or rec.get("expr", "")
        notes = "".join(f" {k}={rec[k]}" for k in ("degree", "smooth", "defines") if k in rec)
        notes += "".join(f" {m}" for m in ("positive", "psd") if rec.get(m))
        notes += f" in [{', '.join(rec['bounds'])}]" if "bounds" in rec else ""
        uses = sorted(graph.predecessors(node))
        lines.append(f"  {rec['span']:>6}  {node}{shape}" + (f" = {body}" if body else "") + notes)
        if uses:
            lines.append(f"{'':10}uses {', '.join(uses)}")
    return "\n".join(lines)


def to_dot(graph: nx.DiGraph) -> str:
    lines = [f'digraph "{graph.graph.get("name") or "plan"}" {{', "  rankdir=LR;", "  node [shape=box, fontname=monospace];"]
    for node in _order(graph):
        rec = node_record(graph, node)
        label = node + (f"\\n{rec['expr']}" if rec.get("expr") else "")
        lines.append(f'  "{node}" [label="{_escape(label)}"];')
    for u, v in sorted(graph.edges):
        lines.append(f'  "{u}" -> "{v}";')
    lines.append("}")
    return "\n".join(lines)


def _escape(text: str) -> str:
    return text.replace('"', '\\"')
