// Cross-object checks of one rendered overlay that no schema can make: what one object names, another
// in the same render must provide. Every check starts from an object present and checks what it
// refers to, so a file holding a single object raises nothing about the objects it lacks.
//  - the router's --prefill-dns / --decode-dns names are headless Services with that port, selecting
//    the pods of the matching worker Deployment;
//  - every Deployment: startup, readiness and liveness probes are gRPC probes on a declared container
//    port; the ports follow the ports contract (docs/operations.md); --metrics-listen's port is the
//    `metrics` container port and the prometheus.io/port annotation, --http-listen's the `http` one;
//    the termination grace period outlasts the router's --drain-grace; ConfigMaps read through envFrom
//    exist;
//  - Services, PodDisruptionBudgets and ServiceMonitors select pods or Services that exist, and a
//    ServiceMonitor's port names are ports of the Services it selects;
//  - each HorizontalPodAutoscaler scales a Deployment of the render, on Pods metrics that a Prometheus
//    adapter rule of the render serves;
//  - the internal plane (docs/security.md): every service reads --cluster-token-file from a Secret
//    volume mounted into its container, all of them the same Secret, and none runs
//    --insecure-internal-plane; the router's --internal-listen is its `internal` port, and a worker's
//    --router names a Service port leading to it; a NetworkPolicy of the render selects the pods of
//    every service that has internal ports (the one check about an object the render lacks: without
//    one, those ports are open to all), lets only the render's own pods reach the internal ports, and
//    leaves the router's public ports open;
//  - TLS on the public API: a router with --tls-cert-file has --tls-key-file too, reads both from one
//    Secret volume mounted into its container, and probes no port that serves TLS (the kubelet's gRPC
//    probes speak plaintext).
import YAML from "yaml";

// The ports contract, per component label.
const PORTS = {
  router: { grpc: 50051, http: 8000, internal: 50055, metrics: 9400 },
  "prefill-worker": { grpc: 50052, metrics: 9401 },
  "decode-worker": { grpc: 50053, handoff: 50054, metrics: 9402 },
};
// Which of those ports are the internal plane (the cluster's own pods only) and which are the public
// API (anyone); the rest (metrics) is neither's business here.
const INTERNAL_PORTS = { router: ["internal"], "prefill-worker": ["grpc"], "decode-worker": ["grpc", "handoff"] };
const PUBLIC_PORTS = { router: ["grpc", "http"] };

const ofKind = (objects, kind) => objects.filter((o) => o.kind === kind);
const name = (o) => o.metadata?.name;
const podLabels = (d) => d.spec?.template?.metadata?.labels ?? {};
const selects = (selector, labels) =>
  selector !== undefined && Object.entries(selector).every(([k, v]) => labels[k] === v);
const matchLabels = (selector) => selector?.matchLabels ?? {};

// `--flag=value` and `--flag value` arguments of a container.
function flagValues(container, flag) {
  const args = [...(container.command ?? []), ...(container.args ?? [])];
  const values = [];
  args.forEach((a, i) => {
    if (a.startsWith(`--${flag}=`)) values.push(a.slice(flag.length + 3));
    else if (a === `--${flag}` && i + 1 < args.length) values.push(args[i + 1]);
  });
  return values.flatMap((v) => v.split(","));
}

// Whether a prometheus-adapter rule serves the custom metric `candidate`.
function adapterServes(rule, candidate) {
  const query = rule.seriesQuery ?? "";
  const regex = /__name__=~"([^"]+)"/.exec(query);
  const plain = /^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)/.exec(query);
  const seriesNames = regex ? [] : plain ? [plain[1]] : [];
  const matches = new RegExp(rule.name?.matches ?? "^(.*)$");
  const rename = (series) => series.replace(matches, (rule.name?.as ?? "$1").replace(/\$\{(\d+)\}/g, "$$$1"));
  if (regex) {
    // The series the regex covers are unknown until scraped: a candidate is served when some series
    // the regex matches would be renamed to it; with the identity rename that is the candidate itself.
    return new RegExp(`^(?:${regex[1]})$`).test(candidate) && rename(candidate) === candidate;
  }
  return seriesNames.some((s) => matches.test(s) && rename(s) === candidate);
}

// The Secret volume whose mount holds `file` in container `c` of pod spec `spec`, or undefined.
function secretHolding(spec, c, file) {
  const mount = (c.volumeMounts ?? []).find((m) => file.startsWith(`${m.mountPath.replace(/\/$/, "")}/`));
  const volume = (spec.volumes ?? []).find((v) => v.name === mount?.name);
  return volume?.secret;
}

// Whether an ingress rule admits container port `portName` (numbered `number`): a rule without ports
// admits every port.
const admits = (rule, portName, number) =>
  (rule.ports ?? []).length === 0 || rule.ports.some((p) => p.port === portName || p.port === number);

// The internal plane of one rendered overlay: the cluster token and the NetworkPolicies.
function checkInternalPlane(objects, deployments, services, where) {
  const problems = [];
  const policies = ofKind(objects, "NetworkPolicy").filter(
    (p) => (p.spec?.policyTypes ?? ["Ingress"]).includes("Ingress"),
  );
  const tokenSecrets = new Map();  // secret name → the Deployments mounting it
  const routerInternalPorts = new Set();  // the router pods' `internal` port, by name and number
  for (const d of deployments) {
    const spec = d.spec?.template?.spec ?? {};
    const component = podLabels(d)["app.kubernetes.io/component"];
    if (!(component in PORTS)) continue;
    for (const c of spec.containers ?? []) {
      const ports = Object.fromEntries((c.ports ?? []).map((p) => [p.name, p.containerPort]));
      const args = [...(c.command ?? []), ...(c.args ?? [])];
      if (args.includes("--insecure-internal-plane")) {
        problems.push(`${where(d)}: container ${c.name} runs --insecure-internal-plane: its internal plane accepts anyone`);
      }
      const files = flagValues(c, "cluster-token-file");
      if (files.length !== 1) {
        problems.push(`${where(d)}: container ${c.name} needs exactly one --cluster-token-file, has ${files.length}`);
      } else {
        const secret = secretHolding(spec, c, files[0]);
        if (secret === undefined) {
          problems.push(`${where(d)}: container ${c.name}'s --cluster-token-file ${files[0]} lies on no mounted Secret volume`);
        } else {
          tokenSecrets.set(secret.secretName, [...(tokenSecrets.get(secret.secretName) ?? []), name(d)]);
        }
      }
      if (component === "router") {
        routerInternalPorts.add("internal").add(ports.internal);
        for (const listen of flagValues(c, "internal-listen")) {
          const port = Number(listen.slice(listen.lastIndexOf(":") + 1));
          if (port !== ports.internal) problems.push(`${where(d)}: --internal-listen port ${port} is not the internal port ${ports.internal}`);
        }
      }
      // Each internal port: ingress-restricted, and only from the render's own pods.
      const selecting = policies.filter((p) => selects(matchLabels(p.spec?.podSelector), podLabels(d)));
      for (const portName of INTERNAL_PORTS[component] ?? []) {
        if (selecting.length === 0) {
          problems.push(`${where(d)}: no NetworkPolicy restricts who reaches its internal port ${portName}`);
          continue;
        }
        for (const p of selecting) {
          for (const rule of (p.spec?.ingress ?? []).filter((r) => admits(r, portName, ports[portName]))) {
            const peers = rule.from ?? [];
            const ownPods = (peer) =>
              peer.podSelector !== undefined && peer.namespaceSelector === undefined && peer.ipBlock === undefined &&
              deployments.some((w) => selects(matchLabels(peer.podSelector), podLabels(w)));
            if (peers.length === 0 || !peers.every(ownPods)) {
              problems.push(`${where(p)}: lets others than the cluster's own pods reach internal port ${portName} of ${where(d)}`);
            }
          }
        }
      }
      for (const portName of PUBLIC_PORTS[component] ?? []) {
        const open = (p) => (p.spec?.ingress ?? []).some((r) => (r.from ?? []).length === 0 && admits(r, portName, ports[portName]));
        const selecting = policies.filter((p) => selects(matchLabels(p.spec?.podSelector), podLabels(d)));
        if (selecting.length > 0 && !selecting.some(open)) {
          problems.push(`${where(d)}: its NetworkPolicies close its public port ${portName} to clients`);
        }
      }
    }
  }
  if (tokenSecrets.size > 1) {
    const mounts = [...tokenSecrets].map(([secret, users]) => `${secret} (${users.join(", ")})`).join(", ");
    problems.push(`the services read their cluster token from different Secrets: ${mounts}`);
  }
  // A worker's --router: a Service port that leads to the router's internal port, not its public one.
  for (const d of deployments) {
    for (const c of d.spec?.template?.spec?.containers ?? []) {
      for (const target of flagValues(c, "router")) {
        const host = target.slice(0, target.lastIndexOf(":")).split(".")[0];
        const port = Number(target.slice(target.lastIndexOf(":") + 1));
        const service = services.find((s) => name(s) === host);
        const servicePort = (service?.spec?.ports ?? []).find((p) => p.port === port);
        if (service === undefined || servicePort === undefined) {
          problems.push(`${where(d)}: --router ${target} names no Service port of the render`);
        } else if (!routerInternalPorts.has(servicePort.targetPort ?? servicePort.port)) {
          problems.push(`${where(d)}: --router ${target} leads to the router's port ${servicePort.targetPort ?? port}, not its internal port`);
        }
      }
    }
  }
  return problems;
}

// TLS on the router's public API: the certificate and key from one mounted Secret, no probe on a
// public port that then serves TLS.
function checkPublicTls(deployments, where) {
  const problems = [];
  for (const d of deployments.filter((d) => podLabels(d)["app.kubernetes.io/component"] === "router")) {
    const spec = d.spec?.template?.spec ?? {};
    for (const c of spec.containers ?? []) {
      const certificates = flagValues(c, "tls-cert-file");
      const keys = flagValues(c, "tls-key-file");
      if (certificates.length === 0 && keys.length === 0) continue;
      if (certificates.length !== 1 || keys.length !== 1) {
        problems.push(`${where(d)}: container ${c.name} needs one --tls-cert-file and one --tls-key-file, has ${certificates.length} and ${keys.length}`);
        continue;
      }
      const secrets = [];
      for (const [flag, file] of [["tls-cert-file", certificates[0]], ["tls-key-file", keys[0]]]) {
        const secret = secretHolding(spec, c, file);
        if (secret === undefined) problems.push(`${where(d)}: container ${c.name}'s --${flag} ${file} lies on no mounted Secret volume`);
        else secrets.push(secret.secretName);
      }
      if (secrets.length === 2 && secrets[0] !== secrets[1]) {
        problems.push(`${where(d)}: container ${c.name} reads its TLS certificate and key from different Secrets: ${secrets.join(", ")}`);
      }
      const ports = Object.fromEntries((c.ports ?? []).map((p) => [p.name, p.containerPort]));
      for (const probe of ["startupProbe", "readinessProbe", "livenessProbe"]) {
        const port = c[probe]?.grpc?.port;
        const tlsPort = (PUBLIC_PORTS.router ?? []).find((p) => port === p || port === ports[p]);
        if (tlsPort !== undefined) {
          problems.push(`${where(d)}: ${probe} asks public port ${tlsPort}, which serves TLS: the kubelet's gRPC probes speak plaintext`);
        }
      }
    }
  }
  return problems;
}

export function checkConventions(objects) {
  const problems = [];
  const where = (o) => `${o.kind} ${name(o)}`;
  const deployments = ofKind(objects, "Deployment");
  const services = ofKind(objects, "Service");
  const configMaps = ofKind(objects, "ConfigMap");
  problems.push(...checkInternalPlane(objects, deployments, services, where));
  problems.push(...checkPublicTls(deployments, where));

  for (const d of deployments) {
    const spec = d.spec?.template?.spec ?? {};
    const component = podLabels(d)["app.kubernetes.io/component"];
    for (const c of spec.containers ?? []) {
      const ports = Object.fromEntries((c.ports ?? []).map((p) => [p.name, p.containerPort]));
      const declared = new Set((c.ports ?? []).flatMap((p) => [p.name, p.containerPort]));
      for (const probe of ["startupProbe", "readinessProbe", "livenessProbe"]) {
        const port = c[probe]?.grpc?.port;
        if (port === undefined) problems.push(`${where(d)}: container ${c.name} has no gRPC ${probe}`);
        else if (!declared.has(port)) problems.push(`${where(d)}: ${probe} on port ${port}, which the container does not declare`);
      }
      if (component in PORTS) {
        for (const [portName, number] of Object.entries(PORTS[component])) {
          if (ports[portName] !== number) {
            problems.push(`${where(d)}: port ${portName} is ${ports[portName]}, the ports contract says ${number}`);
          }
        }
      }
      for (const listen of flagValues(c, "metrics-listen")) {
        const port = Number(listen.slice(listen.lastIndexOf(":") + 1));
        const annotation = Number(d.spec?.template?.metadata?.annotations?.["prometheus.io/port"]);
        if (port !== ports.metrics) problems.push(`${where(d)}: --metrics-listen port ${port} is not the metrics port ${ports.metrics}`);
        if (annotation !== port) problems.push(`${where(d)}: prometheus.io/port ${annotation} is not --metrics-listen's port ${port}`);
      }
      for (const listen of flagValues(c, "http-listen")) {
        const port = Number(listen.slice(listen.lastIndexOf(":") + 1));
        if (port !== ports.http) problems.push(`${where(d)}: --http-listen port ${port} is not the http port ${ports.http}`);
      }
      for (const grace of flagValues(c, "drain-grace")) {
        if (!((spec.terminationGracePeriodSeconds ?? 30) > Number(grace))) {
          problems.push(`${where(d)}: terminationGracePeriodSeconds must outlast --drain-grace ${grace}`);
        }
      }
      for (const ref of (c.envFrom ?? []).map((e) => e.configMapRef?.name).filter(Boolean)) {
        if (!configMaps.some((m) => name(m) === ref)) problems.push(`${where(d)}: envFrom names ConfigMap ${ref}, which the render lacks`);
      }
      for (const [flag, workerComponent] of [["prefill-dns", "prefill-worker"], ["decode-dns", "decode-worker"]]) {
        for (const target of flagValues(c, flag)) {
          const host = target.slice(0, target.lastIndexOf(":"));
          const port = Number(target.slice(target.lastIndexOf(":") + 1));
          const service = services.find((s) => name(s) === host.split(".")[0]);
          if (service === undefined) {
            problems.push(`${where(d)}: --${flag} ${target} names no Service of the render`);
            continue;
          }
          if (service.spec?.clusterIP !== "None") {
            problems.push(`${where(d)}: --${flag} ${target} names Service ${name(service)}, which is not headless (its DNS name would resolve to one virtual IP, not the pods)`);
          }
          if (!(service.spec?.ports ?? []).some((p) => p.port === port)) {
            problems.push(`${where(d)}: --${flag} ${target}: Service ${name(service)} has no port ${port}`);
          }
          const workers = deployments.filter((w) => podLabels(w)["app.kubernetes.io/component"] === workerComponent);
          if (!workers.some((w) => selects(service.spec?.selector, podLabels(w)))) {
            problems.push(`${where(d)}: --${flag} ${target}: Service ${name(service)} selects no ${workerComponent} pods`);
          }
        }
      }
    }
  }

  const selectsSomePods = (selector) => deployments.some((d) => selects(selector, podLabels(d)));
  for (const s of services) {
    if (!selectsSomePods(s.spec?.selector)) problems.push(`${where(s)}: its selector matches no Deployment's pods`);
  }
  for (const p of ofKind(objects, "PodDisruptionBudget")) {
    if (!selectsSomePods(matchLabels(p.spec?.selector))) problems.push(`${where(p)}: its selector matches no Deployment's pods`);
  }
  for (const m of ofKind(objects, "ServiceMonitor")) {
    const expressions = m.spec?.selector?.matchExpressions ?? [];
    const selected = services.filter(
      (s) =>
        selects(matchLabels(m.spec?.selector), s.metadata?.labels ?? {}) &&
        expressions.every((e) => e.operator === "In" && e.values.includes(s.metadata?.labels?.[e.key])),
    );
    if (selected.length === 0) problems.push(`${where(m)}: selects no Service`);
    for (const endpoint of m.spec?.endpoints ?? []) {
      for (const s of selected) {
        if (!(s.spec?.ports ?? []).some((p) => p.name === endpoint.port)) {
          problems.push(`${where(m)}: Service ${name(s)} has no port named ${endpoint.port}`);
        }
      }
    }
  }
  const adapterRules = configMaps.flatMap((m) =>
    Object.values(m.data ?? {}).flatMap((text) => {
      try {
        return YAML.parse(text)?.rules ?? [];
      } catch {
        return [];
      }
    }),
  );
  for (const h of ofKind(objects, "HorizontalPodAutoscaler")) {
    const target = h.spec?.scaleTargetRef;
    if (target?.kind === "Deployment" && !deployments.some((d) => name(d) === target.name)) {
      problems.push(`${where(h)}: scales Deployment ${target.name}, which the render lacks`);
    }
    for (const metric of (h.spec?.metrics ?? []).filter((m) => m.type === "Pods")) {
      const metricName = metric.pods?.metric?.name;
      if (!adapterRules.some((rule) => adapterServes(rule, metricName))) {
        problems.push(`${where(h)}: no Prometheus adapter rule of the render serves the Pods metric ${metricName}`);
      }
    }
  }
  return problems;
}
