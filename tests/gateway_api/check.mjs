// Checks HTTPRoute objects (a JSON array in the file named by the argument) as a cluster with
// the Gateway API v1 CRDs would: the CRD's schema (enums, bounds, required fields), and no
// field the API does not know (TypeScript's excess-property check against the API's types).
// Prints each problem; exits non-zero if there is one.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";
import ts from "typescript";
import { HTTPRoute } from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute";

const here = path.dirname(fileURLToPath(import.meta.url));
const routes = JSON.parse(readFileSync(process.argv[2], "utf8"));
const problems = [];

for (const route of routes) {
  try {
    new HTTPRoute(route).validate();
  } catch (error) {
    problems.push(`schema: ${error.message}`);
  }
}

const source = path.join(here, "routes.check.ts");
const text =
  'import type { IHTTPRoute } from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute";\n' +
  `export const routes: IHTTPRoute[] = ${JSON.stringify(routes, null, 2)};\n`;
const options = { strict: true, noEmit: true, module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext, skipLibCheck: true };
const host = ts.createCompilerHost(options);
const readFile = host.readFile.bind(host);
const fileExists = host.fileExists.bind(host);
host.readFile = (name) => (name === source ? text : readFile(name));
host.fileExists = (name) => name === source || fileExists(name);
const program = ts.createProgram([source], options, host);
for (const diagnostic of ts.getPreEmitDiagnostics(program)) {
  problems.push(`fields: ${ts.flattenDiagnosticMessageText(diagnostic.messageText, " ")}`);
}

for (const problem of problems) console.log(problem);
process.exit(problems.length ? 1 : 0);
