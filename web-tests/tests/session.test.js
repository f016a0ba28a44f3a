// Access tokens that expire every few seconds: the server kicks the socket
// with "token expired", and the page refreshes its tokens and carries on
// without losing, repeating or reordering a message.

import assert from "node:assert/strict";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { eventually, withChat } from "../lib/browser.js";

test("expiring tokens are refreshed without losing messages", { timeout: 180000 }, (t) =>
  withChat(t, "session", { TERN__AUTH__JWT__ACCESS_TTL_SECS: "3" }, async ({ open }) => {
    const alice = await open("alice");
    await alice.register();
    const bob = await open("bob");
    await bob.register();
    let sockets = 0;
    alice.page.on("websocket", () => sockets++);

    await alice.startChat("bob");
    await alice.send("m1");
    await bob.open("alice");
    const sent = ["m1"];
    // About four token lifetimes of steady chatter from both sides.
    for (let i = 2; i <= 13; i++) {
      const text = `m${i}`;
      await (i % 2 ? alice : bob).send(text);
      sent.push(text);
      await sleep(1000);
    }
    await alice.expectMessages(sent);
    await bob.expectMessages(sent);
    assert.ok(sockets >= 3, `alice reconnected after token expiry (${sockets} sockets)`);
    for (const u of [alice, bob]) {
      await eventually(() => u.connState(), "online");
      assert.equal(await u.page.isVisible("#login-view"), false);
    }
  }));
