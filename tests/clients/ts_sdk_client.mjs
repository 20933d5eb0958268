// Calls wick's `generate` tool with the official TypeScript SDK, printing every token the moment
// its progress notification arrives (JSON lines, as py_client.py does).
//
// usage: node ts_sdk_client.mjs URL v1|v2
//   v1: @modelcontextprotocol/sdk 1.x, the widely deployed client (protocol 2025-11-25, sessions)
//   v2: @modelcontextprotocol/client 2.x pinned to protocol 2026-07-28 (stateless)
const [url, flavour] = process.argv.slice(2);
const args = { prompt: "The capital of France is", max_tokens: 24, temperature: 0 };
const emit = (kind, value) => console.log(kind, JSON.stringify(value));
const onprogress = (p) => emit("PROGRESS", { progress: p.progress, total: p.total, message: p.message });

let client, transport, result, protocol;
if (flavour === "v1") {
  const { Client } = await import("@modelcontextprotocol/sdk/client/index.js");
  const { StreamableHTTPClientTransport } = await import("@modelcontextprotocol/sdk/client/streamableHttp.js");
  client = new Client({ name: "wick-test-ts-v1", version: "1.0.0" });
  transport = new StreamableHTTPClientTransport(new URL(url));
  await client.connect(transport);
  protocol = transport.protocolVersion;
  result = await client.callTool({ name: "generate", arguments: args }, undefined, {
    onprogress,
    resetTimeoutOnProgress: true,
  });
  await transport.terminateSession();
} else {
  const { Client, StreamableHTTPClientTransport } = await import("@modelcontextprotocol/client");
  client = new Client(
    { name: "wick-test-ts-v2", version: "1.0.0" },
    { versionNegotiation: { mode: { pin: "2026-07-28" } } },
  );
  await client.connect(new StreamableHTTPClientTransport(new URL(url)));
  protocol = client.getNegotiatedProtocolVersion();
  result = await client.callTool({ name: "generate", arguments: args }, { onprogress });
}
emit("RESULT", {
  protocol,
  text: result.content[0].text,
  structured: result.structuredContent,
  is_error: Boolean(result.isError),
});
await client.close();
