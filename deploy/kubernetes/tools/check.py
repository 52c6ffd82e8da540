#!/usr/bin/env python3
"""Offline checks of Concord's Kubernetes manifests (scripts/validate-k8s.sh runs this).

Why: CI can reach no cluster and pull no image, so a typo in a manifest (a field in the
wrong place, an env var the binary never reads, a `$(VAR)` nobody defines, a Secret key
that does not exist) would only show up when someone deploys. This script catches those:

1. **Render** every kustomization (`deploy/kubernetes`, `base`, `etcd`, `external-etcd`)
   with a small renderer of the kustomize features we use (resources, namespace, images,
   JSON 6902 patches); anything else in a kustomization is an error, never ignored. When
   `kubectl kustomize` is on the machine, its output must equal ours object for object,
   so the renderer cannot drift from the real tool unnoticed.
2. **Files**: each kustomization lists exactly the YAML files of its folder.
3. **Schemas**: every object validates, strictly (unknown fields are errors), against the
   Kubernetes OpenAPI schemas that `kubernetes-validate` ships, for the oldest and the
   newest Kubernetes version we support.
4. **References and house rules**: Services and disruption budgets select pods that exist,
   named ports exist, every `configMapKeyRef` and `secretKeyRef` resolves (Secrets from
   `make-secrets.sh`, when given), every `$(VAR)` is defined before use, every `CONCORD_*`
   variable and `--flag` is one the role reads (parsed from `cli/src/roles/`), every
   container has resource requests and limits, runs non-root on a read-only root file
   system without privileges, and has liveness and readiness probes (native gRPC for the
   gRPC roles; a TCP check only where the role runs mutual TLS, which the kubelet's gRPC
   probe cannot pass).

Exit status 1 with one line per problem when anything fails.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonpatch
import kubernetes_validate
import yaml

# Oldest Kubernetes we support (native gRPC probes are GA since 1.27) and the newest
# whose schemas kubernetes-validate ships.
OLDEST_KUBERNETES = "1.29.0"

# The kustomizations to render, relative to deploy/kubernetes.
KUSTOMIZATIONS = [".", "base", "etcd", "external-etcd", "mtls"]

# Kinds without a namespace (the namespace transformer leaves them alone).
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
                  "StorageClass", "CustomResourceDefinition", "PriorityClass"}

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "namespace", "resources", "images", "patches"}

# Flags the manifests use that another part of issue 15 adds to the CLI: reported, not
# failed, while the role's source does not mention them at all; once it does (the feature
# landed), checked like any other flag, so a different final name fails here.
AWAITED_FLAGS = {("registry", "etcd")}

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}
GRPC_ROLES = {"registry", "node", "aggregator", "shop"}
VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


class Problems:
    """Collects every problem instead of stopping at the first."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.notes: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")


def load_docs(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def ident(obj: dict) -> str:
    meta = obj.get("metadata", {})
    ns = meta.get("namespace")
    return f"{obj.get('kind')}/{(ns + '/') if ns else ''}{meta.get('name')}"


# ---------------------------------------------------------------- rendering


def render(folder: Path) -> list[dict]:
    """The objects `kustomize build folder` gives, for the features we use."""
    kfile = folder / "kustomization.yaml"
    docs = load_docs(kfile)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise ValueError(f"{kfile}: one YAML mapping expected")
    k = docs[0]
    unknown = set(k) - KUSTOMIZATION_KEYS
    if unknown:
        raise ValueError(f"{kfile}: unsupported kustomization fields {sorted(unknown)} "
                         "(extend tools/check.py before using them)")
    if k.get("kind") != "Kustomization":
        raise ValueError(f"{kfile}: kind must be Kustomization")

    objects: list[dict] = []
    for entry in k.get("resources", []):
        path = folder / entry
        if path.is_dir():
            objects.extend(render(path))
        elif path.is_file():
            objects.extend(load_docs(path))
        else:
            raise ValueError(f"{kfile}: resource {entry} does not exist")

    for patch in k.get("patches", []):
        apply_patch(folder, kfile, patch, objects)

    for image in k.get("images", []):
        set_image(image, objects)

    namespace = k.get("namespace")
    if namespace:
        for obj in objects:
            meta = obj.setdefault("metadata", {})
            if obj.get("kind") == "Namespace":
                if meta.get("name") != namespace:
                    raise ValueError(f"{kfile}: Namespace {meta.get('name')} differs from "
                                     f"namespace {namespace}")
            elif obj.get("kind") not in CLUSTER_SCOPED:
                meta["namespace"] = namespace
    return objects


def apply_patch(folder: Path, kfile: Path, patch: dict, objects: list[dict]) -> None:
    """A JSON 6902 patch (inline or from a file) on every object its target names."""
    if set(patch) - {"target", "patch", "path"}:
        raise ValueError(f"{kfile}: unsupported patch fields {sorted(set(patch))}")
    text = patch["patch"] if "patch" in patch else (folder / patch["path"]).read_text()
    ops = yaml.safe_load(text)
    if not isinstance(ops, list):
        raise ValueError(f"{kfile}: only JSON 6902 patches (a list of operations) are "
                         "supported, not strategic merge patches")
    target = patch.get("target") or {}
    if set(target) - {"kind", "name", "namespace"}:
        raise ValueError(f"{kfile}: unsupported patch target fields {sorted(target)}")
    matched = 0
    for i, obj in enumerate(objects):
        meta = obj.get("metadata", {})
        if all([target.get("kind") in (None, obj.get("kind")),
                target.get("name") in (None, meta.get("name")),
                target.get("namespace") in (None, meta.get("namespace"))]):
            objects[i] = jsonpatch.apply_patch(obj, ops)
            matched += 1
    if matched == 0:
        raise ValueError(f"{kfile}: patch target {target} matches nothing")


def split_image(ref: str) -> tuple[str, str]:
    """(name, suffix) where suffix is ':tag', '@digest' or ''."""
    if "@" in ref:
        name, digest = ref.split("@", 1)
        return name, "@" + digest
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon:]
    return ref, ""


def set_image(image: dict, objects: list[dict]) -> None:
    for obj in objects:
        for container in containers_of(obj):
            name, suffix = split_image(container.get("image", ""))
            if name != image["name"]:
                continue
            name = image.get("newName", name)
            if "digest" in image:
                suffix = "@" + image["digest"]
            elif "newTag" in image:
                suffix = ":" + str(image["newTag"])
            container["image"] = name + suffix


def pod_spec(obj: dict) -> dict | None:
    if obj.get("kind") in WORKLOAD_KINDS:
        return obj.get("spec", {}).get("template", {}).get("spec", {})
    return None


def containers_of(obj: dict) -> list[dict]:
    spec = pod_spec(obj)
    if spec is None:
        return []
    return spec.get("initContainers", []) + spec.get("containers", [])


def canonical(objects: list[dict]) -> dict[str, str]:
    return {ident(o): json.dumps(o, sort_keys=True) for o in objects}


def cross_check_kubectl(root: Path, rel: str, ours: list[dict], problems: Problems) -> None:
    """Our rendering must equal `kubectl kustomize`'s, when kubectl is here."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        problems.notes.append(f"{rel}: kubectl not found; rendering not compared with kustomize")
        return
    try:
        done = subprocess.run([kubectl, "kustomize", str(root / rel)], capture_output=True,
                              text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        problems.add(rel, "kubectl kustomize timed out")
        return
    if done.returncode != 0:
        problems.add(rel, f"kubectl kustomize failed: {done.stderr.strip()[:500]}")
        return
    theirs = canonical([d for d in yaml.safe_load_all(done.stdout) if d is not None])
    mine = canonical(ours)
    for key in sorted(set(mine) | set(theirs)):
        if mine.get(key) != theirs.get(key):
            problems.add(rel, f"{key} renders differently here than with kubectl kustomize")


def check_files(folder: Path, problems: Problems) -> None:
    """A kustomization lists exactly the YAML files beside it."""
    k = load_docs(folder / "kustomization.yaml")[0]
    listed = {r for r in k.get("resources", []) if (folder / r).is_file()}
    listed |= {p["path"] for p in k.get("patches", []) if "path" in p}
    present = {p.name for p in folder.iterdir()
               if p.suffix in (".yaml", ".yml") and p.name != "kustomization.yaml"}
    for name in sorted(present - listed):
        problems.add(str(folder), f"{name} is not listed in kustomization.yaml")
    for name in sorted(listed - present):
        problems.add(str(folder), f"kustomization.yaml lists {name}, which is not in the folder")


# ---------------------------------------------------------------- schemas


def validate_schemas(rel: str, objects: list[dict], versions: list[str],
                     problems: Problems) -> None:
    for obj in objects:
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                path = "/".join(str(p) for p in err.path)
                problems.add(f"{rel}: {ident(obj)}", f"Kubernetes {version}: {path}: {err.message}")
            except kubernetes_validate.SchemaNotFoundError as err:
                problems.add(f"{rel}: {ident(obj)}", f"Kubernetes {version}: no schema: {err}")


# ---------------------------------------------------------------- the roles' CLI


class RoleCli:
    """The env vars and long flags each `concord <role>` reads, from cli/src/roles/."""

    def __init__(self, roles_dir: Path) -> None:
        shared = (roles_dir / "mod.rs").read_text(encoding="utf-8")
        self.env: dict[str, set[str]] = {}
        self.flags: dict[str, set[str]] = {}
        self.source: dict[str, str] = {}
        for role in ("registry", "node", "aggregator", "shop", "gateway"):
            text = (roles_dir / f"{role}.rs").read_text(encoding="utf-8") + shared
            self.source[role] = text
            self.env[role] = set(re.findall(r'env = "(CONCORD_[A-Z0-9_]+)"', text))
            flags = {f.replace("_", "-") for f in re.findall(r"pub (\w+):", text)}
            flags |= set(re.findall(r'(?:long|alias) = "([a-z0-9-]+)"', text))
            self.flags[role] = flags


# ---------------------------------------------------------------- references, rules


def labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def check_rules(rel: str, objects: list[dict], cli: RoleCli, secrets: list[dict] | None,
                problems: Problems) -> None:
    configmaps = {(o["metadata"].get("namespace"), o["metadata"]["name"]): o.get("data", {})
                  for o in objects if o.get("kind") == "ConfigMap"}
    secret_keys = None
    if secrets is not None:
        secret_keys = {(s["metadata"].get("namespace"), s["metadata"]["name"]):
                       set(s.get("stringData", {})) | set(s.get("data", {})) for s in secrets}
    workloads = [o for o in objects if o.get("kind") in WORKLOAD_KINDS]

    def pods_selected(namespace, selector):
        return [w for w in workloads if w["metadata"].get("namespace") == namespace
                and labels_match(selector, w["spec"]["template"]["metadata"].get("labels", {}))]

    for obj in objects:
        where = f"{rel}: {ident(obj)}"
        kind, meta = obj.get("kind"), obj.get("metadata", {})
        ns = meta.get("namespace")
        if kind == "Service":
            selected = pods_selected(ns, obj["spec"].get("selector", {}))
            if not selected:
                problems.add(where, "selects no pods")
            for port in obj["spec"].get("ports", []):
                target = port.get("targetPort")
                if isinstance(target, str) and not any(
                        target in {p.get("name") for c in containers_of(w)
                                   for p in c.get("ports", [])} for w in selected):
                    problems.add(where, f"targetPort {target} is no container port of its pods")
        if kind == "PodDisruptionBudget":
            if not pods_selected(ns, obj["spec"]["selector"].get("matchLabels", {})):
                problems.add(where, "selects no pods")
        if kind == "StatefulSet":
            service = obj["spec"].get("serviceName")
            if not any(o.get("kind") == "Service" and o["metadata"]["name"] == service
                       and o["metadata"].get("namespace") == ns
                       and o["spec"].get("clusterIP") == "None" for o in objects):
                problems.add(where, f"serviceName {service} is not a headless Service here")
        if kind in WORKLOAD_KINDS:
            check_workload(where, obj, ns, configmaps, secret_keys, cli, problems)


def check_workload(where, obj, ns, configmaps, secret_keys, cli, problems) -> None:
    spec = obj["spec"]
    template = spec["template"]
    if not labels_match(spec["selector"].get("matchLabels", {}),
                        template["metadata"].get("labels", {})):
        problems.add(where, "selector does not match its pod template")
    pod = template["spec"]
    psc = pod.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True:
        problems.add(where, "pod must set securityContext.runAsNonRoot: true")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.add(where, "pod must use the RuntimeDefault seccomp profile")
    if pod.get("automountServiceAccountToken") is not False:
        problems.add(where, "no Concord pod talks to the Kubernetes API: "
                            "automountServiceAccountToken: false")
    volumes = {v["name"] for v in pod.get("volumes", [])}
    for volume in pod.get("volumes", []):
        source = volume.get("secret")
        if source is None or secret_keys is None:
            continue
        keys = secret_keys.get((ns, source["secretName"]), set())
        for item in source.get("items", []):
            if item["key"] not in keys:
                problems.add(where, f"volume {volume['name']}: make-secrets.sh makes no Secret "
                                    f"{source['secretName']} with key {item['key']}")
    volumes |= {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
    for c in pod.get("containers", []):
        cwhere = f"{where} container {c['name']}"
        check_container_rules(cwhere, c, volumes, problems)
        check_env(cwhere, c, ns, configmaps, secret_keys, problems)
        if split_image(c.get("image", ""))[0].rsplit("/", 1)[-1] == "concord":
            check_concord_container(cwhere, c, cli, problems)


def check_container_rules(where, c, volumes, problems) -> None:
    resources = c.get("resources", {})
    for part in ("requests", "limits"):
        for what in ("cpu", "memory"):
            if what not in resources.get(part, {}):
                problems.add(where, f"resources.{part}.{what} missing")
    sc = c.get("securityContext", {})
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.add(where, "allowPrivilegeEscalation must be false")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.add(where, "readOnlyRootFilesystem must be true")
    if "ALL" not in sc.get("capabilities", {}).get("drop", []):
        problems.add(where, "capabilities must drop ALL")
    for probe in ("readinessProbe", "livenessProbe"):
        if probe not in c:
            problems.add(where, f"{probe} missing")
    for mount in c.get("volumeMounts", []):
        if mount["name"] not in volumes:
            problems.add(where, f"volumeMount {mount['name']} names no volume")


def check_env(where, c, ns, configmaps, secret_keys, problems) -> None:
    """Every reference resolves and every $(VAR) is defined before it is used."""
    defined: set[str] = set()
    for var in c.get("env", []):
        for ref in VAR_REF.findall(str(var.get("value", ""))):
            if ref not in defined:
                problems.add(where, f"env {var['name']} uses $({ref}), not defined before it")
        source = var.get("valueFrom", {})
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            if ref["key"] not in configmaps.get((ns, ref["name"]), {}):
                problems.add(where, f"env {var['name']}: ConfigMap {ref['name']} has no key {ref['key']}")
        if "secretKeyRef" in source and secret_keys is not None:
            ref = source["secretKeyRef"]
            if ref["key"] not in secret_keys.get((ns, ref["name"]), set()):
                problems.add(where, f"env {var['name']}: make-secrets.sh makes no Secret "
                                    f"{ref['name']} with key {ref['key']}")
        defined.add(var["name"])
    for arg in c.get("command", []) + c.get("args", []):
        for ref in VAR_REF.findall(str(arg)):
            if ref not in defined:
                problems.add(where, f"argument {arg} uses $({ref}), which no env var defines")


def check_concord_container(where, c, cli: RoleCli, problems) -> None:
    args = c.get("args", [])
    role = args[0] if args else None
    if role not in cli.env:
        problems.add(where, f"first argument must be a role, got {role!r}")
        return
    for var in c.get("env", []):
        name = var["name"]
        if name.startswith("CONCORD_") and name not in cli.env[role]:
            problems.add(where, f"concord {role} reads no {name} (cli/src/roles/{role}.rs)")
    for arg in args[1:]:
        if not arg.startswith("--"):
            continue
        flag = arg[2:].split("=", 1)[0]
        if flag in cli.flags[role]:
            continue
        if (role, flag) in AWAITED_FLAGS and flag not in cli.source[role]:
            problems.notes.append(f"{where}: --{flag} is not in cli/src/roles/{role}.rs yet "
                                  "(issue 15's registry work adds it)")
        else:
            problems.add(where, f"concord {role} has no flag --{flag}")
    grpc_port = next((p["containerPort"] for p in c.get("ports", []) if p.get("name") == "grpc"),
                     None)
    mutual_tls = any(v["name"] == "CONCORD_TLS_CERT" for v in c.get("env", []))
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe not in c or role not in GRPC_ROLES:
            continue
        spec = c[probe]
        if "grpc" in spec:
            if mutual_tls:
                problems.add(where, f"{probe}: the kubelet's gRPC probe cannot pass mutual TLS")
            elif spec["grpc"].get("port") != grpc_port:
                problems.add(where, f"{probe} probes port {spec['grpc'].get('port')}, "
                                    f"not the grpc port {grpc_port}")
        elif not (mutual_tls and spec.get("tcpSocket", {}).get("port") in ("grpc", grpc_port)):
            problems.add(where, f"{probe} must be a native gRPC probe (grpc.health.v1), or a "
                                "TCP check of the grpc port under mutual TLS")


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="deploy/kubernetes")
    parser.add_argument("--roles", type=Path, help="cli/src/roles (default: from --root)")
    parser.add_argument("--secrets", type=Path,
                        help="make-secrets.sh output to validate and resolve secretKeyRefs in")
    args = parser.parse_args()
    root = args.root.resolve()
    roles = args.roles or root.parent.parent / "cli" / "src" / "roles"
    cli = RoleCli(roles)
    versions = [OLDEST_KUBERNETES, kubernetes_validate.latest_version()]
    problems = Problems()

    secrets = None
    if args.secrets:
        secrets = load_docs(args.secrets)
        validate_schemas(str(args.secrets), secrets, versions, problems)

    total = 0
    for rel in KUSTOMIZATIONS:
        folder = root / rel
        try:
            objects = render(folder)
        except (ValueError, OSError, yaml.YAMLError, jsonpatch.JsonPatchException,
                jsonpatch.JsonPointerException) as err:
            problems.add(rel, f"cannot render: {err}")
            continue
        total += len(objects)
        check_files(folder, problems)
        cross_check_kubectl(root, rel, objects, problems)
        validate_schemas(rel, objects, versions, problems)
        check_rules(rel, objects, cli, secrets, problems)

    for note in problems.notes:
        print(f"note: {note}")
    for item in problems.items:
        print(f"FAIL {item}")
    print(f"k8s manifests: {len(KUSTOMIZATIONS)} kustomizations, {total} objects, "
          f"Kubernetes {' and '.join(versions)}, "
          f"secrets {'checked' if secrets is not None else 'not checked'}: "
          f"{len(problems.items)} problem(s)")
    return 1 if problems.items else 0


if __name__ == "__main__":
    sys.exit(main())
