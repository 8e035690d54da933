// Keeps the message list scrolled to the newest text while the reader is at the bottom, and
// leaves it alone once they scroll up to read something earlier; a "latest" button brings
// them back. (No `scroll-behavior: smooth` on the list: the animation's intermediate
// positions would read as the reader scrolling away.)

// How close to the bottom still counts as "at the bottom", in CSS pixels.
const SLACK = 48;

export class ScrollFollower {
  /**
   * @param {HTMLElement} scroller  the scrolling element (#messages)
   * @param {HTMLButtonElement} button  shown while not following
   */
  constructor(scroller, button) {
    this.scroller = scroller;
    this.button = button;
    this.following = true;
    scroller.addEventListener("scroll", () => this.onScroll(), { passive: true });
    // A wheel turned upwards means "stop following" even before the scroll event reports
    // it, so a step or chunk arriving in between cannot pull the list back down.
    scroller.addEventListener(
      "wheel",
      (event) => {
        if (event.deltaY < 0 && this.scroller.scrollTop > 0) this.following = false;
      },
      { passive: true },
    );
    button.addEventListener("click", () => {
      this.follow();
      scroller.focus({ preventScroll: true });
    });
  }

  onScroll() {
    const { scrollTop, scrollHeight, clientHeight } = this.scroller;
    this.following = scrollHeight - scrollTop - clientHeight <= SLACK;
    this.button.hidden = this.following;
  }

  /** The content grew: stay at the bottom if we were there. */
  update() {
    if (this.following) this.scroller.scrollTop = this.scroller.scrollHeight;
    else this.button.hidden = false;
  }

  /** Follow again (a new message was sent, or the reader asked to). */
  follow() {
    this.following = true;
    this.button.hidden = true;
    this.update();
  }
}
