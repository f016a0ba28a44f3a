// The gateway restarts under open pages: they show it, keep what is typed
// meanwhile, reconnect by themselves and resync, with nothing lost and
// nothing shown twice.

import assert from "node:assert/strict";
import { test } from "node:test";
import { eventually, withChat } from "../lib/browser.js";

test("pages reconnect and resync after the gateway restarts", { timeout: 180000 }, (t) =>
  withChat(t, "restart", {}, async ({ server, open }) => {
    const alice = await open("alice");
    await alice.register();
    const bob = await open("bob");
    await bob.register();
    const carol = await open("carol");
    await carol.register();

    await alice.startChat("bob");
    await alice.send("before 1");
    await bob.open("alice");
    await bob.send("before 2");
    const before = ["before 1", "before 2"];
    await alice.expectMessages(before);
    await bob.expectMessages(before);
    // Carol's chat with Bob is not open on Bob's page during the restart.
    await carol.startChat("bob");
    await carol.send("carol before");
    await eventually(() => bob.unread("carol"), 1);

    await server.stop();
    for (const u of [alice, bob, carol]) {
      await eventually(() => u.connState(), "unreachable", { message: `${u.username} notices the server is gone` });
    }
    await alice.page.locator("#banner", { hasText: "Cannot reach the server" }).waitFor();
    await alice.screenshot("restart-unreachable");

    // Typed while the server is down: kept and marked as waiting.
    await alice.send("during 1");
    await alice.send("during 2");
    await carol.send("carol during");
    await eventually(async () => (await alice.messages()).map((m) => [m.text, m.state]), [
      ["before 1", "stored"], ["before 2", "stored"], ["during 1", "pending"], ["during 2", "pending"],
    ]);

    await server.start();
    for (const u of [alice, bob, carol]) await u.waitOnline();
    await bob.send("after 1");
    await alice.send("after 2");

    const all = [...before, "during 1", "during 2", "after 1", "after 2"];
    await alice.expectMessages(all);
    await bob.expectMessages(all);
    await eventually(() => bob.unread("carol"), 2);
    await bob.open("carol");
    await bob.expectMessages(["carol before", "carol during"]);
    await carol.expectMessages(["carol before", "carol during"]);

    // A second restart, with Bob's page reloaded afterwards: the same
    // history, once each, and no unread left anywhere.
    await server.restart();
    for (const u of [alice, bob, carol]) await u.waitOnline();
    await carol.send("carol after");
    await bob.expectMessages(["carol before", "carol during", "carol after"]);
    await bob.page.reload();
    await bob.waitOnline();
    await bob.expectMessages(["carol before", "carol during", "carol after"]);
    await bob.open("alice");
    await bob.expectMessages(all);
    await alice.expectMessages(all);
    await eventually(async () => (await bob.conversations()).map((c) => c.unread), [0, 0]);
    const ids = [await alice.userId(), await bob.userId()].sort((a, b) => a - b);
    for (const u of [alice, bob]) {
      const state = await server.api("GET", `/api/conversations?device=${await u.device()}`, undefined, await u.token());
      const dm = state.conversations.find((c) => c.conversation_id === `dm:${ids[0]}:${ids[1]}`);
      assert.deepEqual([dm.latest_seq, dm.acked_seq, dm.unread], [6, 6, 0], `${u.username}'s cursor`);
    }
  }));
