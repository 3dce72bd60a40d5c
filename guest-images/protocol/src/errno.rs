//! Linux errno numbers and their names.
//!
//! The numbers are those of `include/uapi/asm-generic/errno-base.h` and
//! `errno.h`, which arm64 and x86_64 both use (only alpha, mips, parisc and
//! sparc differ). The table is our own rather than libc's `strerror` so that
//! the host, which never runs the ioctl, names errors exactly like the guest.

/// `(number, name)` for every errno the kernel defines, in numeric order.
/// Aliases (`EWOULDBLOCK`, `EDEADLOCK`) are left out: a number has one name.
const ERRNOS: &[(i32, &str)] = &[
    (1, "EPERM"),
    (2, "ENOENT"),
    (3, "ESRCH"),
    (4, "EINTR"),
    (5, "EIO"),
    (6, "ENXIO"),
    (7, "E2BIG"),
    (8, "ENOEXEC"),
    (9, "EBADF"),
    (10, "ECHILD"),
    (11, "EAGAIN"),
    (12, "ENOMEM"),
    (13, "EACCES"),
    (14, "EFAULT"),
    (15, "ENOTBLK"),
    (16, "EBUSY"),
    (17, "EEXIST"),
    (18, "EXDEV"),
    (19, "ENODEV"),
    (20, "ENOTDIR"),
    (21, "EISDIR"),
    (22, "EINVAL"),
    (23, "ENFILE"),
    (24, "EMFILE"),
    (25, "ENOTTY"),
    (26, "ETXTBSY"),
    (27, "EFBIG"),
    (28, "ENOSPC"),
    (29, "ESPIPE"),
    (30, "EROFS"),
    (31, "EMLINK"),
    (32, "EPIPE"),
    (33, "EDOM"),
    (34, "ERANGE"),
    (35, "EDEADLK"),
    (36, "ENAMETOOLONG"),
    (37, "ENOLCK"),
    (38, "ENOSYS"),
    (39, "ENOTEMPTY"),
    (40, "ELOOP"),
    (42, "ENOMSG"),
    (43, "EIDRM"),
    (44, "ECHRNG"),
    (45, "EL2NSYNC"),
    (46, "EL3HLT"),
    (47, "EL3RST"),
    (48, "ELNRNG"),
    (49, "EUNATCH"),
    (50, "ENOCSI"),
    (51, "EL2HLT"),
    (52, "EBADE"),
    (53, "EBADR"),
    (54, "EXFULL"),
    (55, "ENOANO"),
    (56, "EBADRQC"),
    (57, "EBADSLT"),
    (59, "EBFONT"),
    (60, "ENOSTR"),
    (61, "ENODATA"),
    (62, "ETIME"),
    (63, "ENOSR"),
    (64, "ENONET"),
    (65, "ENOPKG"),
    (66, "EREMOTE"),
    (67, "ENOLINK"),
    (68, "EADV"),
    (69, "ESRMNT"),
    (70, "ECOMM"),
    (71, "EPROTO"),
    (72, "EMULTIHOP"),
    (73, "EDOTDOT"),
    (74, "EBADMSG"),
    (75, "EOVERFLOW"),
    (76, "ENOTUNIQ"),
    (77, "EBADFD"),
    (78, "EREMCHG"),
    (79, "ELIBACC"),
    (80, "ELIBBAD"),
    (81, "ELIBSCN"),
    (82, "ELIBMAX"),
    (83, "ELIBEXEC"),
    (84, "EILSEQ"),
    (85, "ERESTART"),
    (86, "ESTRPIPE"),
    (87, "EUSERS"),
    (88, "ENOTSOCK"),
    (89, "EDESTADDRREQ"),
    (90, "EMSGSIZE"),
    (91, "EPROTOTYPE"),
    (92, "ENOPROTOOPT"),
    (93, "EPROTONOSUPPORT"),
    (94, "ESOCKTNOSUPPORT"),
    (95, "EOPNOTSUPP"),
    (96, "EPFNOSUPPORT"),
    (97, "EAFNOSUPPORT"),
    (98, "EADDRINUSE"),
    (99, "EADDRNOTAVAIL"),
    (100, "ENETDOWN"),
    (101, "ENETUNREACH"),
    (102, "ENETRESET"),
    (103, "ECONNABORTED"),
    (104, "ECONNRESET"),
    (105, "ENOBUFS"),
    (106, "EISCONN"),
    (107, "ENOTCONN"),
    (108, "ESHUTDOWN"),
    (109, "ETOOMANYREFS"),
    (110, "ETIMEDOUT"),
    (111, "ECONNREFUSED"),
    (112, "EHOSTDOWN"),
    (113, "EHOSTUNREACH"),
    (114, "EALREADY"),
    (115, "EINPROGRESS"),
    (116, "ESTALE"),
    (117, "EUCLEAN"),
    (118, "ENOTNAM"),
    (119, "ENAVAIL"),
    (120, "EISNAM"),
    (121, "EREMOTEIO"),
    (122, "EDQUOT"),
    (123, "ENOMEDIUM"),
    (124, "EMEDIUMTYPE"),
    (125, "ECANCELED"),
    (126, "ENOKEY"),
    (127, "EKEYEXPIRED"),
    (128, "EKEYREVOKED"),
    (129, "EKEYREJECTED"),
    (130, "EOWNERDEAD"),
    (131, "ENOTRECOVERABLE"),
    (132, "ERFKILL"),
    (133, "EHWPOISON"),
];

/// The kernel's name for `errno` (`95` → `"EOPNOTSUPP"`), if it has one.
pub fn errno_name(errno: i32) -> Option<&'static str> {
    ERRNOS
        .iter()
        .find(|(n, _)| *n == errno)
        .map(|(_, name)| *name)
}

/// The number of the errno called `name` (`"EOPNOTSUPP"` → `95`).
///
/// Accepts the userspace aliases `EWOULDBLOCK`, `EDEADLOCK` and `ENOTSUP`
/// too, so scenario files can use whichever spelling their author knows.
pub fn errno_number(name: &str) -> Option<i32> {
    let canonical = match name {
        "EWOULDBLOCK" => "EAGAIN",
        "EDEADLOCK" => "EDEADLK",
        "ENOTSUP" => "EOPNOTSUPP",
        other => other,
    };
    ERRNOS
        .iter()
        .find(|(_, n)| *n == canonical)
        .map(|(number, _)| *number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_errnos_iommufd_returns() {
        let expected = [
            (1, "EPERM"),
            (2, "ENOENT"),
            (7, "E2BIG"),
            (12, "ENOMEM"),
            (16, "EBUSY"),
            (17, "EEXIST"),
            (22, "EINVAL"),
            (25, "ENOTTY"),
            (34, "ERANGE"),
            (75, "EOVERFLOW"),
            (95, "EOPNOTSUPP"),
            (98, "EADDRINUSE"),
            (133, "EHWPOISON"),
        ];
        for (number, name) in expected {
            assert_eq!(errno_name(number), Some(name), "errno {number}");
            assert_eq!(errno_number(name), Some(number), "{name}");
        }
    }

    #[test]
    fn unknown_numbers_and_names_have_no_mapping() {
        assert_eq!(errno_name(0), None);
        assert_eq!(errno_name(134), None);
        assert_eq!(errno_name(-1), None);
        assert_eq!(errno_number("EFOO"), None);
    }

    #[test]
    fn aliases_map_to_the_canonical_number() {
        assert_eq!(errno_number("EWOULDBLOCK"), Some(11));
        assert_eq!(errno_number("ENOTSUP"), Some(95));
        assert_eq!(errno_name(11), Some("EAGAIN"));
    }

    #[test]
    fn table_is_sorted_and_unique() {
        // Linux never assigned 41 and 58; everything else up to 133 exists.
        assert_eq!(ERRNOS.len(), 131);
        for pair in ERRNOS.windows(2) {
            assert!(pair[0].0 < pair[1].0, "disorder at {}", pair[1].0);
        }
        // Name uniqueness follows from the round trip above for every entry.
        for (number, name) in ERRNOS {
            assert_eq!(errno_number(name), Some(*number));
        }
    }
}
