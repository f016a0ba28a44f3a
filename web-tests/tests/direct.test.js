// Two people chat 1:1 in two browsers; keyboard use, errors, takeover by a
// second login, reload, and the phone layout.

import assert from "node:assert/strict";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { PHONE, eventually, withChat } from "../lib/browser.js";

test("two browsers chat 1:1", { timeout: 180000 }, (t) =>
  // The single-session policy, for the takeover below: with several devices
  // allowed (the default) a second login does not close the first.
  withChat(t, "direct", { TERN__GATEWAY__SINGLE_SESSION: "true" }, async ({ open }) => {
    const alice = await open("alice");
    await alice.page.locator("#login-submit").waitFor();
    await alice.screenshot("login");
    await alice.register();
    const bob = await open("bob");
    await bob.register();

    // An unknown username is refused in the dialog, which Escape closes.
    await alice.page.click("#new-chat-btn");
    await alice.page.fill("#chat-username", "nobody");
    await alice.page.press("#chat-username", "Enter");
    await alice.page.locator("#chat-error", { hasText: "There is no user named “nobody”." }).waitFor();
    await alice.page.keyboard.press("Escape");
    await alice.page.waitForSelector("#chat-dialog", { state: "hidden" });

    await alice.startChat("bob");
    await alice.send("Hi Bob, ça va ?");
    await alice.expectMessages(["Hi Bob, ça va ?"]);

    // Bob was not looking at the conversation: one unread, with a preview,
    // and Alice's message is sent, not read.
    await eventually(() => bob.conversations(), [{ name: "alice", unread: 1, preview: "Hi Bob, ça va ?" }]);
    await eventually(() => alice.receipt(), "✓ Sent");
    await bob.open("alice");
    await bob.expectMessages(["Hi Bob, ça va ?"]);
    await eventually(() => bob.unread("alice"), 0);
    // Bob read it: Alice is told at once.
    await eventually(() => alice.receipt(), "✓✓ Read");
    assert.deepEqual(await alice.readBy(), [1]);
    // Each sees the other online, in the header and as a dot in the list.
    await eventually(async () => (await alice.page.textContent("#chat-sub")).startsWith("Online ·"), true);
    await eventually(() => bob.page.locator(".conv .avatar.online").count(), 1);

    // Enter sends; Shift+Enter adds a line.
    await bob.page.click("#composer-input");
    await bob.page.keyboard.type("Hey Alice");
    await bob.page.keyboard.press("Enter");
    await bob.page.keyboard.type("Line one");
    await bob.page.keyboard.press("Shift+Enter");
    await bob.page.keyboard.type("Line two");
    await bob.page.keyboard.press("Enter");
    assert.equal(await bob.page.inputValue("#composer-input"), "");

    const all = ["Hi Bob, ça va ?", "Hey Alice", "Line one\nLine two"];
    await alice.expectMessages(all);
    await bob.expectMessages(all);
    assert.deepEqual((await alice.messages()).map((m) => m.own), [true, false, false]);
    assert.deepEqual((await bob.messages()).map((m) => m.own), [false, true, true]);
    await eventually(() => alice.conversations(), [{ name: "bob", unread: 0, preview: "Line one Line two" }]);

    // Typing shows in the other window's header, and goes away a few
    // seconds after the typing stops, with nothing sent.
    await alice.page.click("#composer-input");
    await alice.page.keyboard.type("Let me thi");
    await eventually(() => bob.page.textContent("#chat-sub"), "typing…");
    await bob.screenshot("typing");
    await alice.page.fill("#composer-input", "");
    await eventually(async () => (await bob.page.textContent("#chat-sub")).startsWith("Online"), true);
    await alice.expectMessages(all);

    for (let i = 1; i <= 3; i++) await alice.send(`Quick message ${i}`);
    const more = [...all, "Quick message 1", "Quick message 2", "Quick message 3"];
    await bob.expectMessages(more);
    await alice.expectMessages(more);
    await alice.screenshot("chat");

    // Reloading keeps the session and shows the same history, nothing twice.
    await bob.page.reload();
    await bob.waitOnline();
    await bob.waitChatTitle("alice");
    await bob.expectMessages(more);
    await eventually(() => bob.unread("alice"), 0);

    // A second login of Bob takes over (single-session policy); the first
    // window says so and stays paused instead of fighting back.
    const bob2 = await open("bob", { viewport: PHONE, mobile: true });
    await bob2.login();
    await eventually(() => bob.connState(), "kicked");
    await bob.page.locator("#banner", { hasText: "You opened Tern somewhere else" }).waitFor();
    await sleep(2500);
    assert.equal(await bob.connState(), "kicked");
    assert.equal(await bob2.connState(), "online");

    // The phone layout: the list alone, then the conversation alone.
    await eventually(() => bob2.conversations(), [{ name: "alice", unread: 0, preview: "Quick message 3" }]);
    assert.equal(await bob2.page.isVisible("#chat"), false);
    await bob2.screenshot("phone-list");
    await bob2.open("alice");
    assert.equal(await bob2.page.isVisible("#conv-list"), false);
    await bob2.expectMessages(more);
    await alice.send("Are you on your phone?");
    await bob2.expectMessages([...more, "Are you on your phone?"]);
    await bob2.page.fill("#composer-input", "Yes!");
    await bob2.page.click("#send-btn");
    await alice.expectMessages([...more, "Are you on your phone?", "Yes!"]);
    await bob2.screenshot("phone-chat");
    await bob2.page.click("#back-btn");
    await bob2.page.locator("#conv-list").waitFor();
    assert.equal(await bob2.page.isVisible("#chat"), false);

    // The paused window can take over again on request.
    await bob.page.click("#banner button");
    await bob.waitOnline();
    await eventually(() => bob2.connState(), "kicked");
    await bob.expectMessages([...more, "Are you on your phone?", "Yes!"]);

    // Alice edits one message and recalls another: both windows show it,
    // and the recalled text is gone.
    const question = alice.page.locator("#messages .msg.own", { hasText: "Are you on your phone?" });
    await question.hover();
    await question.locator("button.edit").click();
    assert.equal(await alice.page.inputValue("#composer-input"), "Are you on your phone?");
    await alice.page.fill("#composer-input", "Are you on your phone now?");
    await alice.page.press("#composer-input", "Enter");
    const quick = alice.page.locator("#messages .msg.own", { hasText: "Quick message 1" });
    await quick.hover();
    await quick.locator("button.recall").click();
    const changed = ["Hi Bob, ça va ?", "Hey Alice", "Line one\nLine two", "This message was recalled", "Quick message 2",
      "Quick message 3", "Are you on your phone now?", "Yes!"];
    await bob.expectMessages(changed);
    await alice.expectMessages(changed);
    assert.equal(await bob.page.locator("#messages .msg[data-edited] .edited").count(), 1);
    assert.equal(await bob.page.locator("#messages .msg.recalled").count(), 1);
    await alice.screenshot("edited-and-recalled");

    // Bob closes every window: Alice sees when he was last seen.
    await bob.page.close();
    await bob2.page.close();
    await eventually(async () => /^Last seen today at /.test(await alice.page.textContent("#chat-sub")), true);
    assert.equal(await alice.page.locator(".conv .avatar.online").count(), 0);
  }));
