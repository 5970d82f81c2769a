// Validates Kubernetes objects (multi-document YAML files, such as `kubectl kustomize` output) against
// the API schemas, offline, the way an API server with strict field validation would:
//  1. each object against its kind's OpenAPI schema (types, required fields, formats, enums), through
//     kubernetes-models' validators, and the Prometheus Operator's CRD schemas for ServiceMonitor;
//  2. no field the schema does not know (a misspelt `livenesProbe` passes step 1, as the schemas allow
//     extra properties, but an API server refuses it): TypeScript's excess-property check of each
//     object against the same models' type declarations.
// Usage: node validate-manifests.mjs FILE.yaml...   Exit status 1, with one line per problem, when any
// object is invalid or of a kind it has no schema for.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";
import YAML from "yaml";
import { checkConventions } from "./manifest-conventions.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));

// The module holding the models of an apiVersion: the core group "v1", a built-in "group/version", or
// the Prometheus Operator's group.
function modelModule(apiVersion) {
  if (apiVersion.startsWith("monitoring.coreos.com/")) return `@kubernetes-models/prometheus-operator/${apiVersion}`;
  return `kubernetes-models/${apiVersion}`;
}

function describe(object, file) {
  const namespace = object?.metadata?.namespace ? `${object.metadata.namespace}/` : "";
  return `${file}: ${object?.kind ?? "?"} ${namespace}${object?.metadata?.name ?? "?"}`;
}

async function loadObjects(files) {
  const objects = [];
  const problems = [];
  for (const file of files) {
    const documents = YAML.parseAllDocuments(fs.readFileSync(file, "utf8"));
    for (const document of documents) {
      if (document.errors.length > 0) {
        problems.push(`${file}: YAML: ${document.errors.map((e) => e.message).join("; ")}`);
        continue;
      }
      const object = document.toJS();
      if (object === null) continue;  // an empty document between separators
      objects.push({ object, file });
    }
  }
  return { objects, problems };
}

// Step 1: the schema validators. Returns the model modules and type names, for step 2.
async function validateSchemas(objects, problems) {
  const typed = [];
  for (const { object, file } of objects) {
    const where = describe(object, file);
    if (typeof object.apiVersion !== "string" || typeof object.kind !== "string") {
      problems.push(`${where}: apiVersion and kind must be strings`);
      continue;
    }
    const module = modelModule(object.apiVersion);
    let models;
    try {
      models = await import(module);
    } catch {
      problems.push(`${where}: no schema for apiVersion ${object.apiVersion}`);
      continue;
    }
    const Model = models[object.kind];
    if (typeof Model !== "function" || Model.apiVersion !== object.apiVersion) {
      problems.push(`${where}: no schema for kind ${object.kind} in ${object.apiVersion}`);
      continue;
    }
    try {
      new Model(object).validate();
    } catch (error) {
      problems.push(`${where}: ${error.message}`);
    }
    typed.push({ object, where, module: `${module}/${object.kind}`, type: `I${object.kind}` });
  }
  return typed;
}

// Step 2: one TypeScript file declaring every object with its model's type, type-checked in memory.
function checkKnownFields(typed, problems) {
  if (typed.length === 0) return;
  const lines = typed.map((t, i) => `import type { ${t.type} as T${i} } from "${t.module}";`);
  const firstObjectLine = lines.length;
  // One object per line, so a diagnostic's line names its object.
  typed.forEach((t, i) => lines.push(`export const object${i}: T${i} = ${JSON.stringify(t.object)};`));
  const fileName = path.join(here, "__manifests__.ts");
  const source = lines.join("\n");
  const options = {
    strict: true,
    noEmit: true,
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.ESNext,
    moduleResolution: ts.ModuleResolutionKind.Bundler,
    skipLibCheck: true,
    types: [],
  };
  const host = ts.createCompilerHost(options);
  const getSourceFile = host.getSourceFile.bind(host);
  host.getSourceFile = (name, version, ...rest) =>
    name === fileName ? ts.createSourceFile(name, source, version) : getSourceFile(name, version, ...rest);
  const fileExists = host.fileExists.bind(host);
  host.fileExists = (name) => name === fileName || fileExists(name);
  const program = ts.createProgram([fileName], options, host);
  for (const diagnostic of ts.getPreEmitDiagnostics(program)) {
    const message = ts.flattenDiagnosticMessageText(diagnostic.messageText, " ");
    if (diagnostic.file?.fileName !== fileName) {
      problems.push(`type declarations: ${message}`);
      continue;
    }
    const { line } = diagnostic.file.getLineAndCharacterOfPosition(diagnostic.start);
    const index = line - firstObjectLine;
    problems.push(`${index >= 0 ? typed[index].where : "imports"}: ${message}`);
  }
}

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node validate-manifests.mjs FILE.yaml...");
  process.exit(2);
}
const { objects, problems } = await loadObjects(files);
const typed = await validateSchemas(objects, problems);
checkKnownFields(typed, problems);
for (const file of files) {
  const rendered = objects.filter((o) => o.file === file).map((o) => o.object);
  for (const problem of checkConventions(rendered)) problems.push(`${file}: ${problem}`);
}
for (const problem of problems) console.error(problem);
console.log(`${objects.length} objects checked, ${problems.length} problems`);
process.exit(problems.length === 0 && objects.length > 0 ? 0 : 1);
