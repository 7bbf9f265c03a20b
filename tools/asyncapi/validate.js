// Validates an AsyncAPI document with the AsyncAPI parser, then every Avro payload with avsc
// (the parser's Avro schema parser converts payloads without validating them: a schema
// with an unknown type passed). Usage: node validate.js FILE ; one line per diagnostic,
// exit 1 on any error.
const fs = require("fs");
const { Parser } = require("@asyncapi/parser");
const { AvroSchemaParser } = require("@asyncapi/avro-schema-parser");
const avsc = require("avsc");
const yaml = require("js-yaml");

async function main() {
  const file = process.argv[2];
  const parser = new Parser();
  parser.registerSchemaParser(AvroSchemaParser());
  const { document, diagnostics } = await parser.parse(fs.readFileSync(file, "utf8"), {
    source: file,
  });
  const levels = ["error", "warning", "info", "hint"];
  for (const d of diagnostics) {
    console.log(`${levels[d.severity]} ${d.code} ${d.path.join(".")}: ${d.message}`);
  }
  let failed = !document || diagnostics.some((d) => d.severity === 0);
  const raw = yaml.load(fs.readFileSync(file, "utf8"));
  for (const [id, message] of Object.entries(raw.components?.messages ?? {})) {
    const payload = message.payload ?? {};
    if (!String(payload.schemaFormat ?? "").startsWith("application/vnd.apache.avro")) continue;
    try {
      avsc.Type.forSchema(payload.schema);
    } catch (err) {
      console.log(`error avro components.messages.${id}.payload: ${err.message}`);
      failed = true;
    }
  }
  if (failed) {
    process.exit(1);
  }
  console.log(`valid: ${document.channels().length} channels, ${document.operations().length} operations`);
}

main().catch((err) => {
  console.log(`error: ${err.message}`);
  process.exit(1);
});
