// Lints the service Dockerfiles without a Docker engine:
//  1. dockerfile-utils' validator (the linter behind the VS Code Docker extension): syntax, argument
//     counts, instructions that have no effect; any warning fails;
//  2. this project's conventions, on dockerfile-ast's parse of the same file: base images pinned to a
//     tag or digest (never `latest`, also through ARG defaults); a target per service that runs its
//     binary from an exec-form ENTRYPOINT (it is PID 1 and receives SIGTERM itself, where a shell
//     form would swallow it) as a non-root numeric user, EXPOSEs the ports of the ports contract, and
//     whose CMD runs its internal plane authenticated (--cluster-token-file, never
//     --insecure-internal-plane).
// Usage: node lint-dockerfiles.mjs Dockerfile...   Exit status 1, with one line per problem.
import fs from "node:fs";
import { DockerfileParser } from "dockerfile-ast";
import { validate } from "dockerfile-utils";

// Each service's target, binary and ports (docs/operations.md, "Ports").
const SERVICES = {
  router: { binary: "/usr/local/bin/indexcache-router", ports: ["50051", "8000", "50055", "9400"] },
  "prefill-worker": { binary: "/usr/local/bin/indexcache-prefill-worker", ports: ["50052", "9401"] },
  "decode-worker": { binary: "/usr/local/bin/indexcache-decode-worker", ports: ["50053", "50054", "9402"] },
};

function lintWithValidator(file, content, problems) {
  for (const d of validate(content)) {
    problems.push(`${file}:${d.range.start.line + 1}: ${d.message}`);
  }
}

// "${NAME}" and "$NAME" replaced by the ARG defaults declared before the first FROM.
function substitute(text, args) {
  return text.replace(/\$\{(\w+)\}|\$(\w+)/g, (whole, braced, bare) => args.get(braced ?? bare) ?? whole);
}

function checkConventions(file, content, problems) {
  const dockerfile = DockerfileParser.parse(content);
  const args = new Map();
  const stages = new Map();  // name → { parent, user, entrypoint, cmd, ports }
  let stage = null;
  for (const instruction of dockerfile.getInstructions()) {
    const keyword = instruction.getKeyword();
    const line = instruction.getRange().start.line + 1;
    const words = instruction.getArguments().map((a) => a.getValue());
    if (keyword === "ARG" && stage === null) {
      const [name, value] = instruction.getArgumentsContent().split("=", 2);
      if (value !== undefined) args.set(name.trim(), value.trim());
    } else if (keyword === "FROM") {
      const image = substitute(words[0] ?? "", args);
      const name = instruction.getBuildStage() ?? `#${stages.size}`;
      stage = { name, parent: stages.get(image) ?? null, user: null, entrypoint: null, cmd: null, ports: [] };
      stages.set(name, stage);
      if (stage.parent === null) {
        const [repository, tag] = image.split("@")[0].split(/:(?=[^/]*$)/);
        if (!image.includes("@") && (tag === undefined || tag === "latest")) {
          problems.push(`${file}:${line}: base image ${image} is not pinned to a tag or digest`);
        }
        if (repository === "") problems.push(`${file}:${line}: FROM names no image`);
      }
    } else if (stage !== null && keyword === "USER") {
      stage.user = { value: substitute(words[0] ?? "", args), line };
    } else if (stage !== null && keyword === "ENTRYPOINT") {
      const json = typeof instruction.getJSONStrings === "function" ? instruction.getJSONStrings() : [];
      stage.entrypoint = { exec: json.length > 0, program: json[0]?.getJSONValue() ?? words[0], line };
    } else if (stage !== null && keyword === "CMD") {
      // The last CMD counts; its words, JSON strings or not.
      const json = typeof instruction.getJSONStrings === "function" ? instruction.getJSONStrings() : [];
      stage.cmd = json.length > 0 ? json.map((j) => j.getJSONValue()) : words;
    } else if (stage !== null && keyword === "EXPOSE") {
      stage.ports.push(...words.map((w) => w.split("/")[0]));
    }
  }
  // What a stage inherits from the stage it is built on.
  const effective = (s, field) => (s === null ? null : s[field] ?? effective(s.parent, field));
  for (const [target, expected] of Object.entries(SERVICES)) {
    const s = stages.get(target);
    if (s === undefined) {
      problems.push(`${file}: no build target '${target}'`);
      continue;
    }
    const user = effective(s, "user");
    const uid = user?.value.split(":")[0];
    if (user === null || !/^\d+$/.test(uid) || uid === "0") {
      problems.push(`${file}: target '${target}' must run as a non-root numeric USER (uid:gid), not ${user?.value ?? "root"}`);
    }
    const entrypoint = effective(s, "entrypoint");
    if (entrypoint === null || !entrypoint.exec) {
      problems.push(`${file}: target '${target}' needs an exec-form ENTRYPOINT ["${expected.binary}"]`);
    } else if (entrypoint.program !== expected.binary) {
      problems.push(`${file}:${entrypoint.line}: target '${target}' runs ${entrypoint.program}, not ${expected.binary}`);
    }
    const cmd = effective(s, "cmd") ?? [];
    if (!cmd.some((w) => w === "--cluster-token-file" || w.startsWith("--cluster-token-file="))) {
      problems.push(`${file}: target '${target}': its CMD passes no --cluster-token-file, so the service refuses to start`);
    }
    if (cmd.includes("--insecure-internal-plane")) {
      problems.push(`${file}: target '${target}': its CMD runs --insecure-internal-plane`);
    }
    const ports = [...new Set([...s.ports])].sort();
    if (JSON.stringify(ports) !== JSON.stringify([...expected.ports].sort())) {
      problems.push(`${file}: target '${target}' exposes [${ports}], the ports contract says [${expected.ports}]`);
    }
  }
}

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node lint-dockerfiles.mjs Dockerfile...");
  process.exit(2);
}
const problems = [];
for (const file of files) {
  const content = fs.readFileSync(file, "utf8");
  lintWithValidator(file, content, problems);
  checkConventions(file, content, problems);
}
for (const problem of problems) console.error(problem);
console.log(`${files.length} Dockerfiles linted, ${problems.length} problems`);
process.exit(problems.length === 0 ? 0 : 1);
