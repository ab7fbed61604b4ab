/* placeholder: being written */
typedef int hp_placeholder_;
