// Runs one agent through the official @ag-ui/client HttpAgent and prints what it saw, as JSON.
const { HttpAgent } = require("@ag-ui/client");

async function main() {
  const [url, key, threadId, runId, text] = process.argv.slice(2);
  const agent = new HttpAgent({
    url,
    headers: { Authorization: `Bearer ${key}` },
    threadId,
    initialMessages: [{ id: "m1", role: "user", content: text }],
  });
  const types = [];
  const result = await agent.runAgent({ runId }, { onEvent: ({ event }) => { types.push(event.type); } });
  console.log(JSON.stringify({ types, newMessages: result.newMessages, messages: agent.messages, result: result.result }));
}

main().catch((error) => { console.error(error); process.exit(1); });
