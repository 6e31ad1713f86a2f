"""Render the kustomize subset that deploy/k8s uses, without kubectl or kustomize.

    python deploy/k8s/kustomize_lite.py deploy/k8s/overlays/prod > prod.yaml

Supported in `kustomization.yaml` (kind Kustomization or Component): `resources` (files or
folders holding a kustomization), `components`, `patches` (strategic-merge documents from `path`
or inline `patch`, optionally with a `target` of kind/name/labelSelector), `namespace`, `labels`
(`pairs`, `includeTemplates`), `images` (`newName`, `newTag`, `digest`), `replicas` and
`configMapGenerator` (`files`, with `options.disableNameSuffixHash: true`). Anything
else is an error rather than being ignored, so the output matches what `kubectl kustomize` would
print for these folders. Strategic merge follows the Kubernetes rules (each field's
patchMergeKey) for the lists used here: containers, env, volumes and imagePullSecrets merge by
`name`, volumeMounts by `mountPath`, a container's ports by `containerPort` and a Service's by
`port`; a list item or key set to `$patch: delete` / null is removed; other lists (NetworkPolicy
ports among them) are replaced.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

KNOWN_KEYS = {
    "apiVersion",
    "kind",
    "metadata",
    "resources",
    "components",
    "patches",
    "namespace",
    "labels",
    "images",
    "replicas",
    "configMapGenerator",
}
# Lists merged item by item, and the field identifying an item (Kubernetes patchMergeKey).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}
# `ports` depends on what holds it: a container (containerPort) or a Service's spec (port).
PORTS_MERGE_KEYS = {"containers": "containerPort", "initContainers": "containerPort", "spec": "port"}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PriorityClass",
    "ClusterIssuer",
}


class KustomizeError(ValueError):
    """The kustomization uses something this renderer does not support, or is inconsistent."""


def merge_key(key: str, parent: str) -> str | None:
    """The field list `key` (inside the field `parent`) merges its items by, or None to replace it."""
    if key == "ports":
        return PORTS_MERGE_KEYS.get(parent)
    return MERGE_KEYS.get(key)


def strategic_merge(base: Any, patch: Any, key: str = "", parent: str = "") -> Any:
    """Merge `patch` into a copy of `base` with the strategic-merge rules listed in the module doc.

    `key` is the field holding `base` and `parent` the field holding that one (list items count as
    held by their list's field).
    """
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = strategic_merge(out[k], v, k, key)
            else:
                out[k] = _strip_directives(copy.deepcopy(v))
        return out
    by = merge_key(key, parent)
    if isinstance(base, list) and isinstance(patch, list) and by is not None:
        out_list = copy.deepcopy(base)
        index = {item.get(by): i for i, item in enumerate(out_list) if isinstance(item, dict)}
        for item in patch:
            ident = item.get(by) if isinstance(item, dict) else None
            if ident is None:
                raise KustomizeError(f"list {key!r} merges by {by}, but a patch item has none: {item}")
            deleting = item.get("$patch") == "delete"
            if ident in index:
                if deleting:
                    out_list[index[ident]] = None
                else:
                    out_list[index[ident]] = strategic_merge(out_list[index[ident]], item, key, parent)
            elif not deleting:
                out_list.append(_strip_directives(copy.deepcopy(item)))
        return [i for i in out_list if i is not None]
    return _strip_directives(copy.deepcopy(patch))


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$patch")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def resource_id(res: Resource) -> tuple[str, str, str]:
    """(kind, namespace, name) identifying a resource in the output."""
    meta = res.get("metadata") or {}
    return res.get("kind", ""), meta.get("namespace", ""), meta.get("name", "")


def load_documents(path: Path) -> list[Resource]:
    """Every non-empty YAML document in a file."""
    with path.open(encoding="utf-8") as fh:
        docs = [d for d in yaml.safe_load_all(fh) if d]
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "metadata" not in doc:
            raise KustomizeError(f"{path}: every document needs kind and metadata")
    return docs


def _matches(res: Resource, target: dict[str, Any]) -> bool:
    unknown = set(target) - {"kind", "name", "labelSelector"}
    if unknown:
        raise KustomizeError(f"unsupported patch target fields: {sorted(unknown)}")
    meta = res.get("metadata") or {}
    if "kind" in target and res.get("kind") != target["kind"]:
        return False
    if "name" in target and meta.get("name") != target["name"]:
        return False
    if "labelSelector" in target:
        labels = meta.get("labels") or {}
        for term in str(target["labelSelector"]).split(","):
            k, _, v = term.strip().partition("=")
            if labels.get(k) != v:
                return False
    return True


def _apply_patch(resources: list[Resource], patch: Resource, target: dict[str, Any] | None) -> None:
    hits = 0
    for i, res in enumerate(resources):
        if target is not None:
            if not _matches(res, target):
                continue
        elif (res.get("kind"), res["metadata"].get("name")) != (
            patch.get("kind"),
            (patch.get("metadata") or {}).get("name"),
        ):
            continue
        body = {k: v for k, v in patch.items() if k not in ("apiVersion", "kind")}
        if target is not None:
            meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "name"}
            body = {**body, "metadata": meta}
        resources[i] = strategic_merge(res, body)
        hits += 1
    if hits == 0:
        what = target if target is not None else f"{patch.get('kind')}/{patch['metadata'].get('name')}"
        raise KustomizeError(f"patch matched no resource: {what}")


def _set_images(resources: list[Resource], images: list[dict[str, Any]]) -> None:
    for res in resources:
        for pod in _pod_specs(res):
            for group in ("initContainers", "containers"):
                for c in pod.get(group) or []:
                    repo = image_repository(c["image"])
                    for rule in images:
                        if rule["name"] != repo:
                            continue
                        new = rule.get("newName", repo)
                        if "digest" in rule:
                            c["image"] = f"{new}@{rule['digest']}"
                        else:
                            tag = rule.get("newTag", c["image"].split("@", 1)[0][len(repo) + 1 :])
                            c["image"] = f"{new}:{tag}"


def image_repository(image: str) -> str:
    """`registry/name` of an image reference, without tag or digest."""
    name = image.split("@", 1)[0]
    if name.rfind(":") > name.rfind("/"):
        name = name[: name.rfind(":")]
    return name


def _pod_specs(res: Resource) -> Iterable[dict[str, Any]]:
    spec = res.get("spec") or {}
    if res.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        yield spec["template"]["spec"]
    elif res.get("kind") == "Pod":
        yield spec


def build(folder: Path) -> list[Resource]:
    """Render the kustomization in `folder` to a list of resources."""
    kfile = folder / "kustomization.yaml"
    if not kfile.is_file():
        raise KustomizeError(f"{folder}: no kustomization.yaml")
    kust = yaml.safe_load(kfile.read_text(encoding="utf-8")) or {}
    unknown = set(kust) - KNOWN_KEYS
    if unknown:
        raise KustomizeError(f"{kfile}: unsupported fields {sorted(unknown)}")
    resources: list[Resource] = []
    for entry in kust.get("resources") or []:
        path = folder / entry
        resources.extend(build(path) if path.is_dir() else load_documents(path))
    resources.extend(_generate_config_maps(folder, kust.get("configMapGenerator") or []))
    for entry in kust.get("components") or []:
        resources = _apply_component(folder / entry, resources)
    _transform(folder, kust, resources)
    seen: set[tuple[str, str, str]] = set()
    for res in resources:
        rid = resource_id(res)
        if rid in seen:
            raise KustomizeError(f"{folder}: duplicate resource {rid}")
        seen.add(rid)
    return resources


def _generate_config_maps(folder: Path, generators: list[dict[str, Any]]) -> list[Resource]:
    out: list[Resource] = []
    for gen in generators:
        unknown = set(gen) - {"name", "files", "options"}
        if unknown or not (gen.get("options") or {}).get("disableNameSuffixHash"):
            raise KustomizeError(
                f"{folder}: configMapGenerator {gen.get('name')}: only `files` with "
                "options.disableNameSuffixHash: true is supported"
            )
        data = {}
        for entry in gen["files"]:
            key, _, rel = entry.rpartition("=") if "=" in entry else ("", "", entry)
            path = folder / rel
            data[key or path.name] = path.read_text(encoding="utf-8")
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    return out


def _apply_component(folder: Path, resources: list[Resource]) -> list[Resource]:
    kust = yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8")) or {}
    if kust.get("kind") != "Component":
        raise KustomizeError(f"{folder}: components must have kind Component")
    out = list(resources)
    for entry in kust.get("resources") or []:
        path = folder / entry
        out.extend(build(path) if path.is_dir() else load_documents(path))
    for entry in kust.get("components") or []:
        out = _apply_component(folder / entry, out)
    _transform(folder, kust, out)
    return out


def _transform(folder: Path, kust: dict[str, Any], resources: list[Resource]) -> None:
    for p in kust.get("patches") or []:
        docs = load_documents(folder / p["path"]) if "path" in p else [yaml.safe_load(p["patch"])]
        for doc in docs:
            _apply_patch(resources, doc, p.get("target"))
    if "namespace" in kust:
        for res in resources:
            if res["kind"] not in CLUSTER_SCOPED:
                res["metadata"]["namespace"] = kust["namespace"]
            for subject in res.get("subjects") or []:
                if subject.get("kind") == "ServiceAccount":
                    subject["namespace"] = kust["namespace"]
    for rule in kust.get("labels") or []:
        for res in resources:
            res["metadata"].setdefault("labels", {}).update(rule["pairs"])
            if rule.get("includeTemplates"):
                for res_spec in [res.get("spec") or {}]:
                    if "template" in res_spec:
                        res_spec["template"].setdefault("metadata", {}).setdefault("labels", {}).update(
                            rule["pairs"]
                        )
    if kust.get("images"):
        _set_images(resources, kust["images"])
    for rule in kust.get("replicas") or []:
        hits = [
            r for r in resources if r["metadata"]["name"] == rule["name"] and "replicas" in r.get("spec", {})
        ]
        if not hits:
            raise KustomizeError(f"{folder}: replicas rule matched nothing: {rule}")
        for r in hits:
            r["spec"]["replicas"] = rule["count"]


def dump(resources: list[Resource]) -> str:
    """Multi-document YAML, in the order the resources were rendered."""
    return yaml.safe_dump_all(resources, sort_keys=False, default_flow_style=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("folder", type=Path, help="a folder holding kustomization.yaml")
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    ns = parser.parse_args(argv)
    text = dump(build(ns.folder))
    if ns.output:
        ns.output.parent.mkdir(parents=True, exist_ok=True)
        ns.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
