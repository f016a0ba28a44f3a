// Rate limits, as a user meets them: sends over the limit are shown as
// waiting and retried by the app, stored once each and in the order typed;
// too many logins get a clear answer.

import assert from "node:assert/strict";
import { test } from "node:test";
import { withChat } from "../lib/browser.js";

const LIMITS = {
  // One message a second with bursts of two, and two logins a minute per username.
  TERN__GATEWAY__LIMITS__MESSAGES_PER_USER_PER_SECOND: "1",
  TERN__GATEWAY__LIMITS__LOGINS_PER_USER_PER_MINUTE: "2",
};

test("rate limits are shown and sends are retried in order", { timeout: 180000 }, (t) =>
  withChat(t, "limits", LIMITS, async ({ open }) => {
    const alice = await open("alice");
    await alice.register();
    const bob = await open("bob");
    await bob.register();
    await alice.startChat("bob");

    const burst = ["one", "two", "three", "four", "five", "six"];
    for (const text of burst) await alice.send(text);
    await alice.page.locator(".toast", { hasText: "You are sending messages too fast." }).waitFor();
    await alice.page.locator("#messages .msg.pending .meta", { hasText: "Retrying: You are sending too fast." }).first().waitFor();
    await alice.screenshot("limits-retrying");
    await bob.open("alice");
    await bob.expectMessages(burst);
    await alice.expectMessages(burst);

    // Alice's registration used one login; a wrong password uses the
    // second; the third attempt within the minute is refused.
    const again = await open("alice");
    again.password = "wrong-password";
    await again.page.fill("#username", "alice");
    await again.page.fill("#password", "wrong-password");
    await again.page.press("#password", "Enter");
    await again.page.locator("#login-error", { hasText: "Wrong username or password." }).waitFor();
    await again.page.fill("#password", "password1");
    await again.page.press("#password", "Enter");
    await again.page.locator("#login-error", { hasText: "Too many attempts. Wait a minute and try again." }).waitFor();
    assert.equal(await again.page.isVisible("#app-view"), false);
  }));
